-- dicomhub.SeriesStable beside dicomhub.StudyStable: one wait per study or series a
-- subscription has seen change, keyed by level (``series_uid`` '': the study's own).
CREATE TABLE webhook_stable_new (
    subscription_id     TEXT NOT NULL,
    partition_name      TEXT NOT NULL,
    study_uid           TEXT NOT NULL,
    series_uid          TEXT NOT NULL DEFAULT '',
    sequence            INTEGER NOT NULL,
    due                 INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, partition_name, study_uid, series_uid)
);
INSERT INTO webhook_stable_new (subscription_id, partition_name, study_uid, sequence, due)
SELECT subscription_id, partition_name, study_uid, sequence, due FROM webhook_stable;
DROP TABLE webhook_stable;
ALTER TABLE webhook_stable_new RENAME TO webhook_stable;
-- dicomhub.OperationFinished: an outbox of events that are no change-feed entry. A finished
-- export, bulk update or reindex writes one row per subscription asking for the event, in the
-- transaction of the operation's final state; the delivery deletes it once taken (or
-- dead-lettered).
CREATE TABLE webhook_outbox (
    subscription_id     TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    partition_name      TEXT,
    time                INTEGER NOT NULL,
    data                TEXT NOT NULL,
    PRIMARY KEY (subscription_id, event_id)
);
