-- Workitem subscriptions per data partition: a subscriber is an AE title in a partition (each
-- partition's subscriptions, global subscriptions and event channel apart). The tables are
-- made again with the partition in their keys; what exists is the default partition's.
DROP INDEX ups_subscription_subscriber;
DROP INDEX ups_event_created;
ALTER TABLE ups_event RENAME TO ups_event_old;
ALTER TABLE ups_subscription RENAME TO ups_subscription_old;
ALTER TABLE ups_global_subscription RENAME TO ups_global_subscription_old;
ALTER TABLE ups_subscriber RENAME TO ups_subscriber_old;
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
INSERT INTO ups_subscriber (partition_name, subscriber, last_sequence)
SELECT 'Microsoft.Default', subscriber, last_sequence FROM ups_subscriber_old;
INSERT INTO ups_global_subscription
    (partition_name, subscriber, kind, deletion_lock, filter, suspended, created)
SELECT 'Microsoft.Default', subscriber, kind, deletion_lock, filter, suspended, created
FROM ups_global_subscription_old;
INSERT INTO ups_subscription (workitem_key, partition_name, subscriber, deletion_lock, created)
SELECT workitem_key, 'Microsoft.Default', subscriber, deletion_lock, created
FROM ups_subscription_old;
INSERT INTO ups_event (partition_name, subscriber, sequence, workitem_uid, created, report)
SELECT 'Microsoft.Default', subscriber, sequence, workitem_uid, created, report
FROM ups_event_old;
DROP TABLE ups_event_old;
DROP TABLE ups_subscription_old;
DROP TABLE ups_global_subscription_old;
DROP TABLE ups_subscriber_old;
