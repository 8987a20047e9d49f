-- Core archive: studies, series, instances, change feed, blob cleanup queue.
-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE study (
    study_key       INTEGER PRIMARY KEY,
    partition_name  TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    patient_id      TEXT,
    patient_name    TEXT,
    study_date      TEXT,
    accession_number TEXT,
    last_sequence   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (partition_name, study_uid)
);

CREATE TABLE series (
    series_key      INTEGER PRIMARY KEY,
    study_key       INTEGER NOT NULL REFERENCES study (study_key),
    series_uid      TEXT NOT NULL,
    modality        TEXT,
    last_sequence   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (study_key, series_uid)
);

-- status 0: claimed by a store in progress (invisible); 1: stored (visible).
CREATE TABLE instance (
    version         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: blob keys derive from it
    series_key      INTEGER NOT NULL REFERENCES series (series_key),
    sop_uid         TEXT NOT NULL,
    status          INTEGER NOT NULL,
    sop_class_uid   TEXT,
    transfer_syntax TEXT,
    size            INTEGER,
    created         INTEGER NOT NULL,
    parse_on_read   INTEGER NOT NULL DEFAULT 0,
    metadata        BLOB,
    frames          TEXT,
    bulk            TEXT,
    UNIQUE (series_key, sop_uid)
);

CREATE TABLE changefeed (
    sequence        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp       INTEGER NOT NULL,
    action          INTEGER NOT NULL,
    partition_name  TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    series_uid      TEXT NOT NULL,
    sop_uid         TEXT NOT NULL,
    version         INTEGER NOT NULL
);
CREATE INDEX changefeed_timestamp ON changefeed (timestamp, sequence);
CREATE INDEX changefeed_instance ON changefeed (partition_name, study_uid, series_uid, sop_uid);

CREATE TABLE blob_deletion (
    id              INTEGER PRIMARY KEY,
    blob_key        TEXT NOT NULL,
    cleanup_after   INTEGER NOT NULL,
    retries         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX blob_deletion_due ON blob_deletion (cleanup_after);
