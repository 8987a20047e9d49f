-- Versions (upsert, and bulk update next): an instance replaced keeps its original version
-- here, its blob with it, until the instance is deleted; the instance row is the latest.
-- Versions in between are not kept (their blobs join the deletion queue when replaced).
CREATE TABLE instance_original (
    series_key          bigint NOT NULL REFERENCES series (series_key),
    sop_uid             text COLLATE "C" NOT NULL,
    version             bigint NOT NULL,
    sop_class_uid       text COLLATE "C",
    transfer_syntax     text COLLATE "C",
    size                bigint,
    created             bigint NOT NULL,
    parse_on_read       integer NOT NULL DEFAULT 0,
    metadata            bytea,
    frames              text,
    bulk                text,
    PRIMARY KEY (series_key, sop_uid)
);
