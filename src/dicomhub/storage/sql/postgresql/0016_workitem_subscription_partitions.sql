-- Workitem subscriptions per data partition: a subscriber is an AE title in a partition (each
-- partition's subscriptions, global subscriptions and event channel apart). The partition
-- joins the keys; what exists is the default partition's.
ALTER TABLE ups_global_subscription DROP CONSTRAINT ups_global_subscription_subscriber_fkey;
ALTER TABLE ups_subscription DROP CONSTRAINT ups_subscription_subscriber_fkey;
ALTER TABLE ups_subscriber ADD COLUMN partition_name text COLLATE "C" NOT NULL DEFAULT 'Microsoft.Default';
ALTER TABLE ups_subscriber ALTER COLUMN partition_name DROP DEFAULT;
ALTER TABLE ups_subscriber DROP CONSTRAINT ups_subscriber_pkey;
ALTER TABLE ups_subscriber ADD PRIMARY KEY (partition_name, subscriber);
ALTER TABLE ups_global_subscription ADD COLUMN partition_name text COLLATE "C" NOT NULL DEFAULT 'Microsoft.Default';
ALTER TABLE ups_global_subscription ALTER COLUMN partition_name DROP DEFAULT;
ALTER TABLE ups_global_subscription DROP CONSTRAINT ups_global_subscription_pkey;
ALTER TABLE ups_global_subscription ADD PRIMARY KEY (partition_name, subscriber);
ALTER TABLE ups_global_subscription ADD FOREIGN KEY (partition_name, subscriber)
    REFERENCES ups_subscriber (partition_name, subscriber);
ALTER TABLE ups_subscription ADD COLUMN partition_name text COLLATE "C" NOT NULL DEFAULT 'Microsoft.Default';
ALTER TABLE ups_subscription ALTER COLUMN partition_name DROP DEFAULT;
ALTER TABLE ups_subscription ADD FOREIGN KEY (partition_name, subscriber)
    REFERENCES ups_subscriber (partition_name, subscriber);
DROP INDEX ups_subscription_subscriber;
CREATE INDEX ups_subscription_subscriber ON ups_subscription (partition_name, subscriber);
ALTER TABLE ups_event ADD COLUMN partition_name text COLLATE "C" NOT NULL DEFAULT 'Microsoft.Default';
ALTER TABLE ups_event ALTER COLUMN partition_name DROP DEFAULT;
ALTER TABLE ups_event DROP CONSTRAINT ups_event_pkey;
ALTER TABLE ups_event ADD PRIMARY KEY (partition_name, subscriber, sequence);
