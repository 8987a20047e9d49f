-- Extended query tags: attributes made searchable at run time. Each level has a table of
-- values (a row per value, typed: text or number; kind 1 rows are the words of a person name),
-- removed with their study, series or instance, and with their tag. "version" is the instance
-- a study's or series' value came from: a newer instance's value replaces an older one's.
ALTER TABLE instance ADD COLUMN invalid TEXT; -- JSON {tag path: why}: values left out of metadata as invalid
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
