-- dicomhub.SeriesStable beside dicomhub.StudyStable: one wait per study or series a
-- subscription has seen change, keyed by level (``series_uid`` '': the study's own).
ALTER TABLE webhook_stable ADD COLUMN series_uid text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE webhook_stable DROP CONSTRAINT webhook_stable_pkey;
ALTER TABLE webhook_stable ADD PRIMARY KEY (subscription_id, partition_name, study_uid, series_uid);
-- dicomhub.OperationFinished: an outbox of events that are no change-feed entry. A finished
-- export, bulk update or reindex writes one row per subscription asking for the event, in the
-- transaction of the operation's final state; the delivery deletes it once taken (or
-- dead-lettered).
CREATE TABLE webhook_outbox (
    subscription_id     text COLLATE "C" NOT NULL,
    event_id            text COLLATE "C" NOT NULL,
    event_type          text NOT NULL,
    partition_name      text COLLATE "C",
    time                bigint NOT NULL,
    data                text NOT NULL,
    PRIMARY KEY (subscription_id, event_id)
);
