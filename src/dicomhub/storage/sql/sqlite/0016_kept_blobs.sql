-- The files of small instances the index keeps itself (--index-blob-max), by version: written
-- in the transaction that commits the instance, so one sync of the index makes both durable.
CREATE TABLE kept_blob (
    version             INTEGER PRIMARY KEY,
    data                BLOB NOT NULL
);
