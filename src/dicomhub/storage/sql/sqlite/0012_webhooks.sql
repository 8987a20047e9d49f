-- Webhook subscriptions (issue 23): the change feed is their outbox. Each subscription keeps the
-- change-feed sequence it has delivered up to, and a lease so that one node at a time delivers
-- to it (another takes over when the holder stops renewing); a store writes nothing here.
-- ``attempts``, ``failing_since`` and ``next_attempt``: the failed deliveries of the next event
-- and when to try again. Events still refused at the end of the retry window are dead-lettered
-- (their body kept, to be replayed on request) and the cursor moves past them.
CREATE TABLE webhook_subscription (
    subscription_id     TEXT PRIMARY KEY,
    url                 TEXT NOT NULL,
    event_types         TEXT NOT NULL,
    filter              TEXT NOT NULL,
    secret              TEXT NOT NULL,
    payload_schema      TEXT NOT NULL,
    paused              INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    updated             INTEGER NOT NULL,
    sequence            INTEGER NOT NULL,
    delivered           INTEGER NOT NULL DEFAULT 0,
    attempts            INTEGER NOT NULL DEFAULT 0,
    failing_since       INTEGER,
    next_attempt        INTEGER NOT NULL,
    last_error          TEXT,
    lease_owner         TEXT,
    lease_expires       INTEGER
);
CREATE INDEX webhook_subscription_due ON webhook_subscription (next_attempt);
CREATE TABLE webhook_deadletter (
    subscription_id     TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    sequence            INTEGER NOT NULL,
    event_type          TEXT NOT NULL,
    body                TEXT NOT NULL,
    error               TEXT NOT NULL,
    attempts            INTEGER NOT NULL,
    dead                INTEGER NOT NULL,
    replay              INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscription_id, event_id)
);
-- Studies a subscription to dicomhub.StudyStable has seen change (the last change passed) and
-- when they are stable if nothing else arrives: the event fires once then, and the row goes.
CREATE TABLE webhook_stable (
    subscription_id     TEXT NOT NULL,
    partition_name      TEXT NOT NULL,
    study_uid           TEXT NOT NULL,
    sequence            INTEGER NOT NULL,
    due                 INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, partition_name, study_uid)
);
