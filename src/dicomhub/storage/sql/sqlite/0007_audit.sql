-- The audit log: one row per request (HTTP or DIMSE), never its credentials.
CREATE TABLE audit_log (
    entry_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at                  INTEGER NOT NULL,
    protocol            TEXT NOT NULL,
    method              TEXT NOT NULL,
    path                TEXT NOT NULL,
    status              INTEGER NOT NULL,
    principal           TEXT,
    client              TEXT,
    address             TEXT,
    route               TEXT,
    action              TEXT,
    study_uid           TEXT,
    series_uid          TEXT,
    sop_uid             TEXT,
    bytes_in            INTEGER NOT NULL,
    bytes_out           INTEGER NOT NULL,
    duration_ms         REAL NOT NULL,
    detail              TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_principal ON audit_log (principal, at);
CREATE INDEX audit_log_study ON audit_log (study_uid, at);
