-- The files of small instances the index keeps itself (SQLite only today: the table is here so
-- that the statements that remove them run on both engines; it stays empty).
CREATE TABLE kept_blob (
    version             bigint PRIMARY KEY,
    data                bytea NOT NULL
);
