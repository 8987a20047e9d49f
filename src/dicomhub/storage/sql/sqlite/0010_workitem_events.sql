-- UPS Watch and Event (PS3.18 11.10-11.14). ups_subscriber numbers the event reports queued
-- for each subscriber (AE title); ups_global_subscription holds the Global and Filtered Global
-- Subscriptions (filter: the query keys as JSON; suspended: no longer added to new
-- workitems); ups_subscription is each workitem's subscription list; ups_event is the queue
-- of reports not yet delivered, written in the transaction of the change they report.
CREATE TABLE ups_subscriber (
    subscriber          TEXT PRIMARY KEY,
    last_sequence       INTEGER NOT NULL
);
CREATE TABLE ups_global_subscription (
    subscriber          TEXT PRIMARY KEY REFERENCES ups_subscriber (subscriber),
    kind                TEXT NOT NULL,
    deletion_lock       INTEGER NOT NULL,
    filter              TEXT,
    suspended           INTEGER NOT NULL,
    created             INTEGER NOT NULL
);
CREATE TABLE ups_subscription (
    workitem_key        INTEGER NOT NULL REFERENCES workitem (workitem_key),
    subscriber          TEXT NOT NULL REFERENCES ups_subscriber (subscriber),
    deletion_lock       INTEGER NOT NULL,
    created             INTEGER NOT NULL,
    PRIMARY KEY (workitem_key, subscriber)
);
CREATE INDEX ups_subscription_subscriber ON ups_subscription (subscriber);
CREATE TABLE ups_event (
    subscriber          TEXT NOT NULL,
    sequence            INTEGER NOT NULL,
    workitem_uid        TEXT NOT NULL,
    created             INTEGER NOT NULL,
    report              TEXT NOT NULL,
    PRIMARY KEY (subscriber, sequence)
);
CREATE INDEX ups_event_created ON ups_event (created);
