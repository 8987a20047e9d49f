-- Webhook subscriptions (issue 23): the change feed is their outbox. Each subscription keeps the
-- change-feed sequence it has delivered up to, and a lease so that one node at a time delivers
-- to it (another takes over when the holder stops renewing); a store writes nothing here.
-- ``attempts``, ``failing_since`` and ``next_attempt``: the failed deliveries of the next event
-- and when to try again. Events still refused at the end of the retry window are dead-lettered
-- (their body kept, to be replayed on request) and the cursor moves past them.
CREATE TABLE webhook_subscription (
    subscription_id     text COLLATE "C" PRIMARY KEY,
    url                 text NOT NULL,
    event_types         text NOT NULL,
    filter              text NOT NULL,
    secret              text NOT NULL,
    payload_schema      text NOT NULL,
    paused              boolean NOT NULL,
    created             bigint NOT NULL,
    updated             bigint NOT NULL,
    sequence            bigint NOT NULL,
    delivered           bigint NOT NULL DEFAULT 0,
    attempts            bigint NOT NULL DEFAULT 0,
    failing_since       bigint,
    next_attempt        bigint NOT NULL,
    last_error          text,
    lease_owner         text COLLATE "C",
    lease_expires       bigint
);
CREATE INDEX webhook_subscription_due ON webhook_subscription (next_attempt);
CREATE TABLE webhook_deadletter (
    subscription_id     text COLLATE "C" NOT NULL,
    event_id            text COLLATE "C" NOT NULL,
    sequence            bigint NOT NULL,
    event_type          text NOT NULL,
    body                text NOT NULL,
    error               text NOT NULL,
    attempts            bigint NOT NULL,
    dead                bigint NOT NULL,
    replay              boolean NOT NULL DEFAULT false,
    PRIMARY KEY (subscription_id, event_id)
);
-- Studies a subscription to dicomhub.StudyStable has seen change (the last change passed) and
-- when they are stable if nothing else arrives: the event fires once then, and the row goes.
CREATE TABLE webhook_stable (
    subscription_id     text COLLATE "C" NOT NULL,
    partition_name      text COLLATE "C" NOT NULL,
    study_uid           text COLLATE "C" NOT NULL,
    sequence            bigint NOT NULL,
    due                 bigint NOT NULL,
    PRIMARY KEY (subscription_id, partition_name, study_uid)
);
