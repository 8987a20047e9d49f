-- A store's commit in one statement (one round trip; see storage/pg_commit.py).

-- Set a study's or series' matching columns (named by the keys of p_columns, as
-- search_keys.columns gives them) and its document.
CREATE FUNCTION dicomhub_set_level(p_table text, p_key bigint, p_columns jsonb, p_doc text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    names text := (SELECT string_agg(quote_ident(k), ', ') FROM jsonb_object_keys(p_columns) k);
BEGIN
    EXECUTE format(
        'UPDATE %1$I SET (%2$s, doc) = (SELECT %2$s, $3 FROM jsonb_populate_record(NULL::%1$I, $1)) '
        'WHERE %3$I = $2', p_table, names, p_table || '_key')
    USING p_columns, p_key, p_doc;
END
$$;

-- An instance's values of extended query tags at one level (1 study, 2 series, 3 instance),
-- picked from the arrays by p_level: per tag, they replace the owner's values unless a newer
-- instance gave those (as eqt_ops._index does).
CREATE FUNCTION dicomhub_index_values(
    p_level integer, p_owner bigint, p_version bigint, p_tags bigint[], p_levels integer[],
    p_kinds bigint[], p_texts text[], p_numbers double precision[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        WITH given AS (
            SELECT tag, kind, text_value, num_value
            FROM unnest($3, $4, $5, $6, $7) AS u(tag, level, kind, text_value, num_value)
            WHERE level = $8
        ), fresh AS (
            SELECT DISTINCT tag FROM given g WHERE NOT EXISTS (
                SELECT 1 FROM %1$I e
                WHERE e.tag_key = g.tag AND e.owner_key = $1 AND e.version > $2)
        ), replaced AS (
            DELETE FROM %1$I e USING fresh f WHERE e.tag_key = f.tag AND e.owner_key = $1
        )
        INSERT INTO %1$I (tag_key, owner_key, version, kind, text_value, num_value)
        SELECT g.tag, $1, $2, g.kind, g.text_value, g.num_value FROM given g JOIN fresh USING (tag)
        $sql$,
        (ARRAY['extended_query_tag_study', 'extended_query_tag_series',
               'extended_query_tag_instance'])[p_level])
    USING p_owner, p_version, p_tags, p_levels, p_kinds, p_texts, p_numbers, p_level;
END
$$;

-- A store's commit in one statement, so in one round trip and a transaction of its own (see
-- storage/pg_commit.py, and index_ops.commit for the same steps on SQLite): end the upload,
-- find or add the study and series, add the instance, count it, merge the study's and series'
-- documents, index the extended query tags, write the change-feed entry. Nothing is written
-- when it raises:
--   DH001  the upload was abandoned (the cleanup job took the store's blob)
--   DH002  the instance is stored already
--   DH003  the study's or series' document is not p_*_base, the one the caller merged into
--          p_*_doc (DETAIL: the current ones, as JSON); the caller merges again
--   DH004  the extended query tags being indexed are not p_tags; the caller reads them again
CREATE FUNCTION dicomhub_store(
    p_version bigint, p_partition text, p_study_uid text, p_series_uid text, p_sop_uid text,
    p_sop_class text, p_transfer_syntax text, p_size bigint, p_now bigint,
    p_parse_on_read integer, p_metadata bytea, p_frames text, p_bulk text,
    p_instance_number bigint, p_acquisition text, p_doc text, p_invalid text,
    p_study_base text, p_study_doc text, p_study_columns jsonb, p_word_tags bigint[],
    p_words text[],
    p_series_base text, p_series_doc text, p_series_columns jsonb, p_steps text[],
    p_procedures text[],
    p_tags bigint[], p_error_tags bigint[], p_errors text[],
    p_value_tags bigint[], p_value_levels integer[], p_value_kinds bigint[], p_value_texts text[],
    p_value_numbers double precision[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_study bigint;
    v_series bigint;
    v_first boolean;
    v_study_old text;
    v_series_old text;
    v_tags bigint[];
    v_level integer;
BEGIN
    -- The first write: from here the transaction has its id, before it reads the extended
    -- query tags below (PostgresIndex.settled_version relies on that).
    DELETE FROM blob_upload WHERE version = p_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'store % was abandoned', p_version USING ERRCODE = 'DH001';
    END IF;
    -- Study, then series, locked against their removal by a delete (which locks them in the
    -- same order, see index_ops.delete) from here on; one a delete removes meanwhile is not
    -- found, and made anew. A concurrent store may add it between the two statements of a
    -- loop: then the next round finds it.
    LOOP
        SELECT study_key INTO v_study
        FROM study WHERE partition_name = p_partition AND study_uid = p_study_uid
        FOR KEY SHARE;
        EXIT WHEN FOUND;
        INSERT INTO study (partition_name, study_uid) VALUES (p_partition, p_study_uid)
        ON CONFLICT DO NOTHING RETURNING study_key INTO v_study;
        EXIT WHEN FOUND;
    END LOOP;
    LOOP
        SELECT series_key INTO v_series
        FROM series WHERE study_key = v_study AND series_uid = p_series_uid
        FOR KEY SHARE;
        EXIT WHEN FOUND;
        INSERT INTO series (study_key, series_uid) VALUES (v_study, p_series_uid)
        ON CONFLICT DO NOTHING RETURNING series_key INTO v_series;
        EXIT WHEN FOUND;
    END LOOP;
    INSERT INTO instance (version, series_key, sop_uid, sop_class_uid, transfer_syntax, size,
        created, parse_on_read, metadata, frames, bulk, instance_number, acquisition_datetime,
        doc, invalid)
    VALUES (p_version, v_series, p_sop_uid, p_sop_class, p_transfer_syntax, p_size, p_now,
        p_parse_on_read, p_metadata, p_frames, p_bulk, p_instance_number, p_acquisition, p_doc,
        p_invalid)
    ON CONFLICT (series_key, sop_uid) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'SOP instance % is already stored', p_sop_uid USING ERRCODE = 'DH002';
    END IF;
    UPDATE series SET instance_count = instance_count + 1, revision = revision + 1
    WHERE series_key = v_series
    RETURNING instance_count = 1, doc INTO v_first, v_series_old;
    UPDATE study SET instance_count = instance_count + 1,
        series_count = series_count + v_first::integer, revision = revision + 1
    WHERE study_key = v_study
    RETURNING doc INTO v_study_old;
    -- p_*_doc is search_keys.merge_docs(p_*_base, the instance's document): still right when
    -- the current document is that base, or when there was none to merge into and it is the
    -- instance's own (merge_docs keeps it as it is).
    IF NOT ((coalesce(v_series_old, '') = coalesce(p_series_base, '')
             OR (coalesce(p_series_base, '') = '' AND v_series_old = p_series_doc))
        AND (coalesce(v_study_old, '') = coalesce(p_study_base, '')
             OR (coalesce(p_study_base, '') = '' AND v_study_old = p_study_doc))) THEN
        RAISE EXCEPTION 'the documents of study % changed', p_study_uid USING ERRCODE = 'DH003',
            DETAIL = json_build_object('study', v_study_old, 'series', v_series_old)::text;
    END IF;
    IF p_series_doc IS DISTINCT FROM v_series_old THEN
        PERFORM dicomhub_set_level('series', v_series, p_series_columns, p_series_doc);
        DELETE FROM series_request WHERE series_key = v_series;
        INSERT INTO series_request (series_key, scheduled_step_id, requested_procedure_id)
        SELECT v_series, s, r FROM unnest(p_steps, p_procedures) AS u(s, r);
    END IF;
    IF p_study_doc IS DISTINCT FROM v_study_old THEN
        PERFORM dicomhub_set_level('study', v_study, p_study_columns, p_study_doc);
        DELETE FROM person_name_word WHERE study_key = v_study;
        INSERT INTO person_name_word (study_key, tag, word)
        SELECT v_study, t, w FROM unnest(p_word_tags, p_words) AS u(t, w);
    END IF;
    SELECT coalesce(array_agg(tag_key ORDER BY tag_key), '{}') INTO v_tags
    FROM extended_query_tag WHERE status IN ('Adding', 'Ready');
    IF v_tags IS DISTINCT FROM p_tags THEN
        RAISE EXCEPTION 'the extended query tags changed' USING ERRCODE = 'DH004';
    END IF;
    IF cardinality(p_error_tags) > 0 THEN
        INSERT INTO extended_query_tag_error (tag_key, version, created, message)
        SELECT t, p_version, p_now, m FROM unnest(p_error_tags, p_errors) AS u(t, m);
    END IF;
    FOR v_level IN SELECT DISTINCT l FROM unnest(p_value_levels) AS l LOOP
        PERFORM dicomhub_index_values(v_level,
            CASE v_level WHEN 1 THEN v_study WHEN 2 THEN v_series ELSE p_version END,
            p_version, p_value_tags, p_value_levels, p_value_kinds, p_value_texts,
            p_value_numbers);
    END LOOP;
    -- Last, after every write it may depend on (see dicomhub_number_changes); action 0: create
    INSERT INTO changefeed (timestamp, action, partition_name, study_uid, series_uid, sop_uid,
        version)
    VALUES (p_now, 0, p_partition, p_study_uid, p_series_uid, p_sop_uid, p_version);
END
$$;
