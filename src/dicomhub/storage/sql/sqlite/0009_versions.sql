-- Versions (upsert, and bulk update next): an instance replaced keeps its original version
-- here, its blob with it, until the instance is deleted; the instance row is the latest.
-- Versions in between are not kept (their blobs join the deletion queue when replaced).
CREATE TABLE instance_original (
    series_key          INTEGER NOT NULL REFERENCES series (series_key),
    sop_uid             TEXT NOT NULL,
    version             INTEGER NOT NULL,
    sop_class_uid       TEXT,
    transfer_syntax     TEXT,
    size                INTEGER,
    created             INTEGER NOT NULL,
    parse_on_read       INTEGER NOT NULL DEFAULT 0,
    metadata            BLOB,
    frames              TEXT,
    bulk                TEXT,
    PRIMARY KEY (series_key, sop_uid)
);
