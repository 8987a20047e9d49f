-- Background jobs and the long-running operations clients follow at /operations/{id}. A worker
-- claims a job by taking its lease and keeps it by renewing it; a job whose lease ran out (its
-- worker died) is claimed again by another. "singleton" holds the kind of a job of which only
-- one may be pending or running at a time, and is cleared when it ends.
CREATE TABLE operation (
    operation_id        TEXT PRIMARY KEY,
    type                TEXT NOT NULL,
    status              TEXT NOT NULL, -- notStarted, running, completed, failed
    percent_complete    INTEGER NOT NULL DEFAULT 0,
    created             INTEGER NOT NULL,
    last_updated        INTEGER NOT NULL,
    payload             TEXT NOT NULL,
    checkpoint          TEXT,
    results             TEXT,
    errors              TEXT NOT NULL DEFAULT '[]',
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    not_before          INTEGER NOT NULL,
    lease_owner         TEXT,
    lease_expires       INTEGER,
    singleton           TEXT UNIQUE
);
CREATE INDEX operation_ready ON operation (status, not_before);
