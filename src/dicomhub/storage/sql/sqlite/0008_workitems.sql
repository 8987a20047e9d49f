-- UPS workitems (UPS-RS Push and Pull): one row per workitem with its DICOM JSON dataset, its
-- state, the Transaction UID that locks it while IN PROGRESS, and a revision each change
-- increments (changes are conditional on it). workitem_value holds the normalised values of its
-- matching keys, one row per (path of tags, sequence item, value).
CREATE TABLE workitem (
    workitem_key        INTEGER PRIMARY KEY,
    partition_name      TEXT NOT NULL,
    workitem_uid        TEXT NOT NULL,
    state               TEXT NOT NULL,
    transaction_uid     TEXT,
    revision            INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    updated             INTEGER NOT NULL,
    dataset             TEXT NOT NULL,
    UNIQUE (partition_name, workitem_uid)
);
CREATE TABLE workitem_value (
    workitem_key        INTEGER NOT NULL REFERENCES workitem (workitem_key),
    path                TEXT NOT NULL,
    item                INTEGER NOT NULL,
    value               TEXT NOT NULL
);
CREATE INDEX workitem_value_match ON workitem_value (path, value, workitem_key);
CREATE INDEX workitem_value_owner ON workitem_value (workitem_key);
