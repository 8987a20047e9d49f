-- Stores in progress move out of the instance table into blob_upload: an instance row exists
-- only once stored, so two stores of one instance race at commit (one wins, the other is a
-- duplicate) and every study/series row is visible. Versions keep counting from where they were.
-- Storage order is the order of keys and versions; a study's or series' revision (its ETag)
-- counts its changes.

CREATE TABLE blob_upload (
    version         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: blob keys derive from it
    partition_name  TEXT NOT NULL,
    started         INTEGER NOT NULL
);
CREATE INDEX blob_upload_started ON blob_upload (started);
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'blob_upload', seq FROM sqlite_sequence WHERE name = 'instance';
INSERT INTO blob_upload (version, partition_name, started)
    SELECT i.version, st.partition_name, i.created
    FROM instance i JOIN series se ON se.series_key = i.series_key
    JOIN study st ON st.study_key = se.study_key
    WHERE i.status = 0;
DELETE FROM instance WHERE status = 0;
DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM instance i WHERE i.series_key = series.series_key);
DELETE FROM study WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.study_key = study.study_key);

DROP INDEX study_order;
DROP INDEX series_order;
DROP INDEX instance_order;
ALTER TABLE study DROP COLUMN created_sequence;
ALTER TABLE series DROP COLUMN created_sequence;
ALTER TABLE instance DROP COLUMN created_sequence;
ALTER TABLE instance DROP COLUMN status;
ALTER TABLE study RENAME COLUMN last_sequence TO revision;
ALTER TABLE series RENAME COLUMN last_sequence TO revision;
