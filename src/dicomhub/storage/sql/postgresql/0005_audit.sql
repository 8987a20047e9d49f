-- The audit log: one row per request (HTTP or DIMSE), never its credentials.
CREATE TABLE audit_log (
    entry_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                  bigint NOT NULL,
    protocol            text NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    status              integer NOT NULL,
    principal           text COLLATE "C",
    client              text,
    address             text,
    route               text,
    action              text,
    study_uid           text COLLATE "C",
    series_uid          text COLLATE "C",
    sop_uid             text COLLATE "C",
    bytes_in            bigint NOT NULL,
    bytes_out           bigint NOT NULL,
    duration_ms         double precision NOT NULL,
    detail              text
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_principal ON audit_log (principal, at);
CREATE INDEX audit_log_study ON audit_log (study_uid, at);
