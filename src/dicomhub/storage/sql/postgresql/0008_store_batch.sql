-- Several stores' commits in one statement (one round trip, one transaction, one WAL flush;
-- see storage/pg_commit.py): the arguments of dicomhub_store, one row per store.
CREATE TYPE dicomhub_store_args AS (
    version bigint, partition_name text, study_uid text, series_uid text, sop_uid text,
    sop_class text, transfer_syntax text, size bigint, now bigint,
    parse_on_read integer, metadata bytea, frames text, bulk text,
    instance_number bigint, acquisition text, doc text, invalid text,
    study_base text, study_doc text, study_columns jsonb, word_tags bigint[], words text[],
    series_base text, series_doc text, series_columns jsonb, steps text[], procedures text[],
    tags bigint[], error_tags bigint[], errors text[],
    value_tags bigint[], value_levels integer[], value_kinds bigint[], value_texts text[],
    value_numbers double precision[]
);

-- Each store of p_stores in a subtransaction of its own, in order: one that raises one of
-- dicomhub_store's errors (DH001 to DH004) leaves nothing written and the others go on. The
-- outcome of each, in order: NULL when it is committed with the others, else the error's
-- SQLSTATE, with ':' and its DETAIL when it has one. Any other error ends the statement (and
-- writes nothing).
CREATE FUNCTION dicomhub_store_each(p_stores dicomhub_store_args[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    s dicomhub_store_args;
    outcomes text[] := '{}';
    v_state text;
    v_detail text;
BEGIN
    FOREACH s IN ARRAY p_stores LOOP
        BEGIN
            PERFORM dicomhub_store(s.version, s.partition_name, s.study_uid, s.series_uid,
                s.sop_uid, s.sop_class, s.transfer_syntax, s.size, s.now, s.parse_on_read,
                s.metadata, s.frames, s.bulk, s.instance_number, s.acquisition, s.doc,
                s.invalid, s.study_base, s.study_doc, s.study_columns, s.word_tags, s.words,
                s.series_base, s.series_doc, s.series_columns, s.steps, s.procedures, s.tags,
                s.error_tags, s.errors, s.value_tags, s.value_levels, s.value_kinds,
                s.value_texts, s.value_numbers);
            outcomes := array_append(outcomes, NULL::text);
        EXCEPTION WHEN SQLSTATE 'DH001' OR SQLSTATE 'DH002' OR SQLSTATE 'DH003'
                    OR SQLSTATE 'DH004' THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_detail = PG_EXCEPTION_DETAIL;
            outcomes := array_append(outcomes, v_state || coalesce(':' || nullif(v_detail, ''), ''));
        END;
    END LOOP;
    RETURN outcomes;
END
$$;
