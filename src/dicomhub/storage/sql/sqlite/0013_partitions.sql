-- Data partitions (GET /v{n}/partitions): each name once, numbered as first stored to. The
-- default partition is the first; the stores made before this migration name their own.
CREATE TABLE data_partition (
    partition_key       INTEGER PRIMARY KEY,
    partition_name      TEXT NOT NULL UNIQUE,
    created             INTEGER NOT NULL
);
INSERT INTO data_partition (partition_name, created)
VALUES ('Microsoft.Default', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
INSERT INTO data_partition (partition_name, created)
SELECT DISTINCT partition_name, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
FROM study WHERE partition_name <> 'Microsoft.Default' ORDER BY partition_name
