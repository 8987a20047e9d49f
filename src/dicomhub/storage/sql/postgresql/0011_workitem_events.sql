-- UPS Watch and Event (PS3.18 11.10-11.14). ups_subscriber numbers the event reports queued
-- for each subscriber (AE title): a report takes the next number by an UPDATE of that row, so
-- transactions reporting to one subscriber take turns on it and numbers follow commit order;
-- ups_global_subscription holds the Global and Filtered Global Subscriptions (filter: the
-- query keys as JSON; suspended: no longer added to new workitems); ups_subscription is each
-- workitem's subscription list; ups_event is the queue of reports not yet delivered, written
-- in the transaction of the change they report.
CREATE TABLE ups_subscriber (
    subscriber          text COLLATE "C" PRIMARY KEY,
    last_sequence       bigint NOT NULL
);
CREATE TABLE ups_global_subscription (
    subscriber          text COLLATE "C" PRIMARY KEY REFERENCES ups_subscriber (subscriber),
    kind                text COLLATE "C" NOT NULL,
    deletion_lock       boolean NOT NULL,
    filter              text,
    suspended           boolean NOT NULL,
    created             bigint NOT NULL
);
CREATE TABLE ups_subscription (
    workitem_key        bigint NOT NULL REFERENCES workitem (workitem_key),
    subscriber          text COLLATE "C" NOT NULL REFERENCES ups_subscriber (subscriber),
    deletion_lock       boolean NOT NULL,
    created             bigint NOT NULL,
    PRIMARY KEY (workitem_key, subscriber)
);
CREATE INDEX ups_subscription_subscriber ON ups_subscription (subscriber);
CREATE TABLE ups_event (
    subscriber          text COLLATE "C" NOT NULL,
    sequence            bigint NOT NULL,
    workitem_uid        text COLLATE "C" NOT NULL,
    created             bigint NOT NULL,
    report              text NOT NULL,
    PRIMARY KEY (subscriber, sequence)
);
CREATE INDEX ups_event_created ON ups_event (created);
