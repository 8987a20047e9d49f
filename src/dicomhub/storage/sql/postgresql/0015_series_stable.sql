-- dicomhub.SeriesStable beside dicomhub.StudyStable: one wait per study or series a
-- subscription has seen change, keyed by level (``series_uid`` '': the study's own).
ALTER TABLE webhook_stable ADD COLUMN series_uid text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE webhook_stable DROP CONSTRAINT webhook_stable_pkey;
ALTER TABLE webhook_stable ADD PRIMARY KEY (subscription_id, partition_name, study_uid, series_uid);
