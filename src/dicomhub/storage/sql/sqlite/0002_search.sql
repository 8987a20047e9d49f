-- QIDO-RS: the matching keys of each level (normalised), the level documents returned by search,
-- counters, and the order in which studies, series and instances became visible.
-- Existing rows are filled in from the stored metadata right after this script (see
-- sqlite_index.BACKFILLS).

ALTER TABLE study ADD COLUMN patient_birth_date TEXT;
ALTER TABLE study ADD COLUMN study_time TEXT;
ALTER TABLE study ADD COLUMN referring_physician TEXT;
ALTER TABLE study ADD COLUMN study_description TEXT;
ALTER TABLE study ADD COLUMN study_id TEXT;
ALTER TABLE study ADD COLUMN doc TEXT;
ALTER TABLE study ADD COLUMN created_sequence INTEGER;
ALTER TABLE study ADD COLUMN instance_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE study ADD COLUMN series_count INTEGER NOT NULL DEFAULT 0;

ALTER TABLE series ADD COLUMN series_number INTEGER;
ALTER TABLE series ADD COLUMN pps_start_date TEXT;
ALTER TABLE series ADD COLUMN pps_start_time TEXT;
ALTER TABLE series ADD COLUMN manufacturer_model_name TEXT;
ALTER TABLE series ADD COLUMN doc TEXT;
ALTER TABLE series ADD COLUMN created_sequence INTEGER;
ALTER TABLE series ADD COLUMN instance_count INTEGER NOT NULL DEFAULT 0;

ALTER TABLE instance ADD COLUMN instance_number INTEGER;
ALTER TABLE instance ADD COLUMN acquisition_datetime TEXT;
ALTER TABLE instance ADD COLUMN doc TEXT;
ALTER TABLE instance ADD COLUMN created_sequence INTEGER;

-- Items of RequestAttributesSequence (sequence matching at series level).
CREATE TABLE series_request (
    series_key          INTEGER NOT NULL REFERENCES series (series_key) ON DELETE CASCADE,
    scheduled_step_id   TEXT,
    requested_procedure_id TEXT
);
CREATE INDEX series_request_series ON series_request (series_key);
CREATE INDEX series_request_step ON series_request (scheduled_step_id);
CREATE INDEX series_request_procedure ON series_request (requested_procedure_id);

-- Words of the study's person names, for fuzzy (word-prefix) matching through an index.
CREATE TABLE person_name_word (
    study_key   INTEGER NOT NULL REFERENCES study (study_key) ON DELETE CASCADE,
    tag         INTEGER NOT NULL,
    word        TEXT NOT NULL
);
CREATE INDEX person_name_word_lookup ON person_name_word (tag, word, study_key);
CREATE INDEX person_name_word_study ON person_name_word (study_key);

-- Partitions are few: a partition is a filter, not an index prefix, so that the planner picks
-- the index of the matching key (or the order index) rather than scanning a whole partition.
CREATE INDEX study_order ON study (created_sequence);
CREATE INDEX study_patient_id ON study (patient_id);
CREATE INDEX study_patient_name ON study (patient_name);
CREATE INDEX study_birth_date ON study (patient_birth_date);
CREATE INDEX study_date ON study (study_date, study_time);
CREATE INDEX study_accession ON study (accession_number);
CREATE INDEX study_referring ON study (referring_physician);
CREATE INDEX study_description ON study (study_description);
CREATE INDEX study_id ON study (study_id);

CREATE INDEX series_uid ON series (series_uid);
CREATE INDEX series_order ON series (created_sequence);
CREATE INDEX series_modality ON series (modality, study_key);
CREATE INDEX series_number ON series (series_number);
CREATE INDEX series_pps_start ON series (pps_start_date, pps_start_time);
CREATE INDEX series_model ON series (manufacturer_model_name);

CREATE INDEX instance_sop_uid ON instance (sop_uid);
CREATE INDEX instance_order ON instance (created_sequence);
CREATE INDEX instance_sop_class ON instance (sop_class_uid);
CREATE INDEX instance_number ON instance (instance_number);
CREATE INDEX instance_acquisition ON instance (acquisition_datetime);
