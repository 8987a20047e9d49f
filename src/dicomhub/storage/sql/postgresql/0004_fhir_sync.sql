-- FHIR sync: where the sync into each FHIR server (target = its base URL) has got to in the
-- change feed, which node holds it (a lease, so one node syncs at a time), and the entries the
-- FHIR server refused for good, with its OperationOutcome.
CREATE TABLE fhir_sync (
    target              text COLLATE "C" PRIMARY KEY,
    sequence            bigint NOT NULL,
    synced              bigint NOT NULL DEFAULT 0,
    updated             bigint NOT NULL,
    lease_owner         text COLLATE "C",
    lease_expires       bigint
);
CREATE TABLE fhir_failure (
    failure_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target              text COLLATE "C" NOT NULL,
    sequence            bigint NOT NULL,
    study_uid           text COLLATE "C" NOT NULL,
    error               text NOT NULL,
    outcome             text,
    at                  bigint NOT NULL
);
CREATE INDEX fhir_failure_target ON fhir_failure (target, failure_id);
