-- The SQLite index as the migrations build it (a test checks they do). Times are integer
-- microseconds since the Unix epoch, UTC.

CREATE TABLE schema_version (version INTEGER NOT NULL);

CREATE TABLE study (
    study_key           INTEGER PRIMARY KEY,
    partition_name      TEXT NOT NULL,
    study_uid           TEXT NOT NULL,
    patient_id          TEXT,
    patient_name        TEXT,
    study_date          TEXT,
    accession_number    TEXT,
    revision            INTEGER NOT NULL DEFAULT 0,
    patient_birth_date  TEXT,
    study_time          TEXT,
    referring_physician TEXT,
    study_description   TEXT,
    study_id            TEXT,
    doc                 TEXT,
    instance_count      INTEGER NOT NULL DEFAULT 0,
    series_count        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (partition_name, study_uid)
);

CREATE TABLE series (
    series_key          INTEGER PRIMARY KEY,
    study_key           INTEGER NOT NULL REFERENCES study (study_key),
    series_uid          TEXT NOT NULL,
    modality            TEXT,
    revision            INTEGER NOT NULL DEFAULT 0,
    series_number       INTEGER,
    pps_start_date      TEXT,
    pps_start_time      TEXT,
    manufacturer_model_name TEXT,
    doc                 TEXT,
    instance_count      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (study_key, series_uid)
);

CREATE TABLE instance (
    version             INTEGER PRIMARY KEY AUTOINCREMENT,
    series_key          INTEGER NOT NULL REFERENCES series (series_key),
    sop_uid             TEXT NOT NULL,
    sop_class_uid       TEXT,
    transfer_syntax     TEXT,
    size                INTEGER,
    created             INTEGER NOT NULL,
    parse_on_read       INTEGER NOT NULL DEFAULT 0,
    metadata            BLOB,
    frames              TEXT,
    bulk                TEXT,
    instance_number     INTEGER,
    acquisition_datetime TEXT,
    doc                 TEXT,
    invalid             TEXT,
    UNIQUE (series_key, sop_uid)
);

-- Versions (upsert, and bulk update next): an instance replaced keeps its original version
-- here, its blob with it, until the instance is deleted; the instance row is the latest.
-- Versions in between are not kept (their blobs join the deletion queue when replaced).
CREATE TABLE instance_original (
    series_key          INTEGER NOT NULL REFERENCES series (series_key),
    sop_uid             TEXT NOT NULL,
    version             INTEGER NOT NULL,
    sop_class_uid       TEXT,
    transfer_syntax     TEXT,
    size                INTEGER,
    created             INTEGER NOT NULL,
    parse_on_read       INTEGER NOT NULL DEFAULT 0,
    metadata            BLOB,
    frames              TEXT,
    bulk                TEXT,
    PRIMARY KEY (series_key, sop_uid)
);

CREATE TABLE blob_upload (
    version             INTEGER PRIMARY KEY AUTOINCREMENT,
    partition_name      TEXT NOT NULL,
    started             INTEGER NOT NULL
);
CREATE INDEX blob_upload_started ON blob_upload (started);

CREATE TABLE changefeed (
    sequence            INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp           INTEGER NOT NULL,
    action              INTEGER NOT NULL,
    partition_name      TEXT NOT NULL,
    study_uid           TEXT NOT NULL,
    series_uid          TEXT NOT NULL,
    sop_uid             TEXT NOT NULL,
    version             INTEGER NOT NULL
);
CREATE INDEX changefeed_timestamp ON changefeed (timestamp, sequence);
CREATE INDEX changefeed_instance ON changefeed (partition_name, study_uid, series_uid, sop_uid);

CREATE TABLE blob_deletion (
    id                  INTEGER PRIMARY KEY,
    blob_key            TEXT NOT NULL,
    cleanup_after       INTEGER NOT NULL,
    retries             INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX blob_deletion_due ON blob_deletion (cleanup_after);

CREATE TABLE series_request (
    series_key          INTEGER NOT NULL REFERENCES series (series_key) ON DELETE CASCADE,
    scheduled_step_id   TEXT,
    requested_procedure_id TEXT
);
CREATE INDEX series_request_series ON series_request (series_key);
CREATE INDEX series_request_step ON series_request (scheduled_step_id);
CREATE INDEX series_request_procedure ON series_request (requested_procedure_id);

CREATE TABLE person_name_word (
    study_key           INTEGER NOT NULL REFERENCES study (study_key) ON DELETE CASCADE,
    tag                 INTEGER NOT NULL,
    word                TEXT NOT NULL
);
CREATE INDEX person_name_word_lookup ON person_name_word (tag, word, study_key);
CREATE INDEX person_name_word_study ON person_name_word (study_key);

CREATE INDEX study_patient_id ON study (patient_id);
CREATE INDEX study_patient_name ON study (patient_name);
CREATE INDEX study_birth_date ON study (patient_birth_date);
CREATE INDEX study_date ON study (study_date, study_time);
CREATE INDEX study_accession ON study (accession_number);
CREATE INDEX study_referring ON study (referring_physician);
CREATE INDEX study_description ON study (study_description);
CREATE INDEX study_id ON study (study_id);

CREATE INDEX series_uid ON series (series_uid);
CREATE INDEX series_modality ON series (modality, study_key);
CREATE INDEX series_number ON series (series_number);
CREATE INDEX series_pps_start ON series (pps_start_date, pps_start_time);
CREATE INDEX series_model ON series (manufacturer_model_name);

CREATE INDEX instance_sop_uid ON instance (sop_uid);
CREATE INDEX instance_sop_class ON instance (sop_class_uid);
CREATE INDEX instance_number ON instance (instance_number);
CREATE INDEX instance_acquisition ON instance (acquisition_datetime);
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

CREATE TABLE extended_query_tag (
    tag_key             INTEGER PRIMARY KEY,
    path                TEXT NOT NULL UNIQUE,
    vr                  TEXT NOT NULL,
    private_creator     TEXT,
    level               INTEGER NOT NULL,
    status              TEXT NOT NULL, -- Adding, Ready
    query_status        TEXT NOT NULL, -- Enabled, Disabled
    operation_id        TEXT,
    indexed_until       INTEGER NOT NULL -- the reindex covers versions up to this one
);
CREATE TABLE extended_query_tag_study (
    tag_key             INTEGER NOT NULL REFERENCES extended_query_tag (tag_key) ON DELETE CASCADE,
    owner_key           INTEGER NOT NULL REFERENCES study (study_key) ON DELETE CASCADE,
    version             INTEGER NOT NULL,
    kind                INTEGER NOT NULL,
    text_value          TEXT,
    num_value           REAL
);
CREATE INDEX extended_query_tag_study_text ON extended_query_tag_study (tag_key, text_value);
CREATE INDEX extended_query_tag_study_num ON extended_query_tag_study (tag_key, num_value);
CREATE INDEX extended_query_tag_study_owner ON extended_query_tag_study (owner_key, tag_key);
CREATE TABLE extended_query_tag_series (
    tag_key             INTEGER NOT NULL REFERENCES extended_query_tag (tag_key) ON DELETE CASCADE,
    owner_key           INTEGER NOT NULL REFERENCES series (series_key) ON DELETE CASCADE,
    version             INTEGER NOT NULL,
    kind                INTEGER NOT NULL,
    text_value          TEXT,
    num_value           REAL
);
CREATE INDEX extended_query_tag_series_text ON extended_query_tag_series (tag_key, text_value);
CREATE INDEX extended_query_tag_series_num ON extended_query_tag_series (tag_key, num_value);
CREATE INDEX extended_query_tag_series_owner ON extended_query_tag_series (owner_key, tag_key);
CREATE TABLE extended_query_tag_instance (
    tag_key             INTEGER NOT NULL REFERENCES extended_query_tag (tag_key) ON DELETE CASCADE,
    owner_key           INTEGER NOT NULL REFERENCES instance (version) ON DELETE CASCADE,
    version             INTEGER NOT NULL,
    kind                INTEGER NOT NULL,
    text_value          TEXT,
    num_value           REAL
);
CREATE INDEX extended_query_tag_instance_text ON extended_query_tag_instance (tag_key, text_value);
CREATE INDEX extended_query_tag_instance_num ON extended_query_tag_instance (tag_key, num_value);
CREATE INDEX extended_query_tag_instance_owner ON extended_query_tag_instance (owner_key, tag_key);
CREATE TABLE extended_query_tag_error (
    tag_key             INTEGER NOT NULL REFERENCES extended_query_tag (tag_key) ON DELETE CASCADE,
    version             INTEGER NOT NULL REFERENCES instance (version) ON DELETE CASCADE,
    created             INTEGER NOT NULL,
    message             TEXT NOT NULL,
    PRIMARY KEY (tag_key, version)
);
CREATE INDEX extended_query_tag_error_instance ON extended_query_tag_error (version);

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
    detail              TEXT,
    request_id          TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_principal ON audit_log (principal, at);
CREATE INDEX audit_log_study ON audit_log (study_uid, at);
CREATE INDEX audit_log_request ON audit_log (request_id);

-- UPS workitems (UPS-RS Push and Pull): one row per workitem with its DICOM JSON dataset, its
-- state, the Transaction UID that locks it while IN PROGRESS, and a revision each change
-- increments (changes are conditional on it). workitem_value holds the normalised values of its
-- matching keys, one row per (path of tags, sequence item, value).
CREATE TABLE workitem (
    workitem_key        INTEGER PRIMARY KEY,
    partition_name      TEXT NOT NULL,
    workitem_uid        TEXT NOT NULL,
    state               TEXT NOT NULL,
    transaction_uid     TEXT,
    revision            INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    updated             INTEGER NOT NULL,
    dataset             TEXT NOT NULL,
    UNIQUE (partition_name, workitem_uid)
);
CREATE TABLE workitem_value (
    workitem_key        INTEGER NOT NULL REFERENCES workitem (workitem_key),
    path                TEXT NOT NULL,
    item                INTEGER NOT NULL,
    value               TEXT NOT NULL
);
CREATE INDEX workitem_value_match ON workitem_value (path, value, workitem_key);
CREATE INDEX workitem_value_owner ON workitem_value (workitem_key);

-- UPS Watch and Event (PS3.18 11.10-11.14). A subscriber is an AE title in a data partition
-- (each partition's subscriptions and event channel apart). ups_subscriber numbers the event
-- reports queued for each subscriber; ups_global_subscription holds the Global and Filtered
-- Global Subscriptions (filter: the query keys as JSON; suspended: no longer added to new
-- workitems of its partition); ups_subscription is each workitem's subscription list;
-- ups_event is the queue of reports not yet delivered, written in the transaction of the
-- change they report.
CREATE TABLE ups_subscriber (
    partition_name      TEXT NOT NULL,
    subscriber          TEXT NOT NULL,
    last_sequence       INTEGER NOT NULL,
    PRIMARY KEY (partition_name, subscriber)
);
CREATE TABLE ups_global_subscription (
    partition_name      TEXT NOT NULL,
    subscriber          TEXT NOT NULL,
    kind                TEXT NOT NULL,
    deletion_lock       INTEGER NOT NULL,
    filter              TEXT,
    suspended           INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    PRIMARY KEY (partition_name, subscriber),
    FOREIGN KEY (partition_name, subscriber) REFERENCES ups_subscriber (partition_name, subscriber)
);
CREATE TABLE ups_subscription (
    workitem_key        INTEGER NOT NULL REFERENCES workitem (workitem_key),
    partition_name      TEXT NOT NULL,
    subscriber          TEXT NOT NULL,
    deletion_lock       INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    PRIMARY KEY (workitem_key, subscriber),
    FOREIGN KEY (partition_name, subscriber) REFERENCES ups_subscriber (partition_name, subscriber)
);
CREATE INDEX ups_subscription_subscriber ON ups_subscription (partition_name, subscriber);
CREATE TABLE ups_event (
    partition_name      TEXT NOT NULL,
    subscriber          TEXT NOT NULL,
    sequence            INTEGER NOT NULL,
    workitem_uid        TEXT NOT NULL,
    created             INTEGER NOT NULL,
    report              TEXT NOT NULL,
    PRIMARY KEY (partition_name, subscriber, sequence)
);
CREATE INDEX ups_event_created ON ups_event (created);

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
-- Studies (series_uid '') and series a subscription to dicomhub.StudyStable or SeriesStable has
-- seen change (the last change passed) and
-- when they are stable if nothing else arrives: the event fires once then, and the row goes.
CREATE TABLE webhook_stable (
    subscription_id     TEXT NOT NULL,
    partition_name      TEXT NOT NULL,
    study_uid           TEXT NOT NULL,
    series_uid          TEXT NOT NULL DEFAULT '',
    sequence            INTEGER NOT NULL,
    due                 INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, partition_name, study_uid, series_uid)
);
-- dicomhub.OperationFinished: an outbox of events that are no change-feed entry. A finished
-- export, bulk update or reindex writes one row per subscription asking for the event, in the
-- transaction of the operation's final state; the delivery deletes it once taken (or
-- dead-lettered).
CREATE TABLE webhook_outbox (
    subscription_id     TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    partition_name      TEXT,
    time                INTEGER NOT NULL,
    data                TEXT NOT NULL,
    PRIMARY KEY (subscription_id, event_id)
);
CREATE TABLE data_partition (
    partition_key       INTEGER PRIMARY KEY,
    partition_name      TEXT NOT NULL UNIQUE,
    created             INTEGER NOT NULL
);
CREATE TABLE kept_blob (
    version             INTEGER PRIMARY KEY,
    data                BLOB NOT NULL
);
