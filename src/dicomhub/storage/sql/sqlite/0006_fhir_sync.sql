-- FHIR sync: where the sync into each FHIR server (target = its base URL) has got to in the
-- change feed, which node holds it (a lease, so one node syncs at a time), and the entries the
-- FHIR server refused for good, with its OperationOutcome.
CREATE TABLE fhir_sync (
    target              TEXT PRIMARY KEY,
    sequence            INTEGER NOT NULL,
    synced              INTEGER NOT NULL DEFAULT 0,
    updated             INTEGER NOT NULL,
    lease_owner         TEXT,
    lease_expires       INTEGER
);
CREATE TABLE fhir_failure (
    failure_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    target              TEXT NOT NULL,
    sequence            INTEGER NOT NULL,
    study_uid           TEXT NOT NULL,
    error               TEXT NOT NULL,
    outcome             TEXT,
    at                  INTEGER NOT NULL
);
CREATE INDEX fhir_failure_target ON fhir_failure (target, failure_id);
