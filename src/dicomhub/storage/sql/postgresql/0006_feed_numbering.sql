-- The change feed without a global lock: a write inserts its entries without a sequence number
-- ("id" is the order they were written in); dicomhub_number_changes, run by readers, numbers
-- the entries that have committed since it last ran. Readers see numbered entries only.
-- Entries numbered before this migration keep their numbers.
ALTER TABLE changefeed ALTER COLUMN sequence DROP IDENTITY;
ALTER TABLE changefeed DROP CONSTRAINT changefeed_pkey;
ALTER TABLE changefeed ALTER COLUMN sequence DROP NOT NULL;
ALTER TABLE changefeed ADD CONSTRAINT changefeed_sequence_key UNIQUE (sequence);
ALTER TABLE changefeed ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
CREATE INDEX changefeed_unnumbered ON changefeed (id) WHERE sequence IS NULL;

-- Number the committed entries that have none, in the order they were written, after the last
-- number given: contiguous numbers, each given once, never to an entry of a transaction still
-- running (its rows are invisible here). A transaction writes its entries last, after the
-- writes they depend on, so an entry written after another transaction committed is numbered
-- after that transaction's entries, as is anything a snapshot shows only together with them.
-- Timestamps are raised to the latest numbered before, so that the feed by time is in sequence
-- order too and only ever grows at its end.
--
-- One caller numbers at a time: the lock is on this step alone (never taken by a write), and a
-- caller that finds it taken returns at once (it reads what is numbered so far). The UPDATE's
-- snapshot is taken after the lock, so it sees the numbers of the caller before.
CREATE FUNCTION dicomhub_number_changes() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    numbered bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7340117) THEN
        RETURN 0;
    END IF;
    WITH last AS (
        SELECT (SELECT coalesce(max(sequence), 0) FROM changefeed) AS sequence,
               (SELECT coalesce(max(timestamp), 0) FROM changefeed
                WHERE sequence IS NOT NULL) AS latest
    ), fresh AS (
        SELECT id, row_number() OVER w AS n, max(timestamp) OVER w AS latest
        FROM changefeed WHERE sequence IS NULL
        WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING)
    )
    UPDATE changefeed c
    SET sequence = last.sequence + fresh.n, timestamp = greatest(last.latest, fresh.latest)
    FROM last, fresh
    WHERE c.id = fresh.id;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    RETURN numbered;
END
$$;
