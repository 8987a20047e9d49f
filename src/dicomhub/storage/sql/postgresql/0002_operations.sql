-- Background jobs and the long-running operations clients follow at /operations/{id}. A worker
-- claims a job (FOR UPDATE SKIP LOCKED) by taking its lease and keeps it by renewing it; a job
-- whose lease ran out (its worker died) is claimed again by another. "singleton" holds the kind
-- of a job of which only one may be pending or running at a time, and is cleared when it ends.
CREATE TABLE operation (
    operation_id        text COLLATE "C" PRIMARY KEY,
    type                text COLLATE "C" NOT NULL,
    status              text COLLATE "C" NOT NULL,
    percent_complete    integer NOT NULL DEFAULT 0,
    created             bigint NOT NULL,
    last_updated        bigint NOT NULL,
    payload             text NOT NULL,
    checkpoint          text,
    results             text,
    errors              text NOT NULL DEFAULT '[]',
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL,
    not_before          bigint NOT NULL,
    lease_owner         text COLLATE "C",
    lease_expires       bigint,
    singleton           text COLLATE "C" UNIQUE
);
CREATE INDEX operation_ready ON operation (status, not_before);
