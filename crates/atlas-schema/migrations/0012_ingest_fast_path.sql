-- 0012: a fast path for the durable flush (ingest_rows) and for the hot projection.
--
-- Measured on one 5 000-value batch (1 000 entities, 3 hot values each): the bare INSERT of
-- the rows costs what COPY costs (~33 ms), but ingest_rows took ~94 ms once warm. The general
-- path (flush_moved) classifies every row into a materialized CTE, copies the batch into
-- composite arrays twice, inserts with ON CONFLICT (a speculative insertion per row, +35 %) and
-- RETURNING, and merged each entity's projection with a FULL JOIN of jsonb_each sets (~35 µs
-- an entity).
--
-- The common batch is all valid, all new and newer than the projection. ingest_rows now checks
-- that with two aggregate queries, stores the rows with a plain INSERT in primary-key order and
-- projects straight from its parameter. Anything else - an invalid row, a replayed or
-- duplicated key, a value outside the partitions - makes the plain INSERT's subtransaction roll
-- back and the batch takes the unchanged general path (flush_moved): the same dead letters, the
-- same "replays store nothing", only slower. hot_attrs_apply concatenates when every value of a
-- delta is newer than every value of the projection and merges key by key otherwise.

-- True when the delta has values and each of its times is newer than every time in the
-- projection: the merge is then plain concatenation. A jsonpath comparison of two sequences is
-- existential, so the path finds a projection time >= some delta time. STABLE, not IMMUTABLE:
-- jsonb_build_object is STABLE, and an IMMUTABLE body with a STABLE call is never inlined.
CREATE FUNCTION public.hot_attrs_all_newer(p_cur_at jsonb, p_delta_at jsonb)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT p_delta_at <> '{}'::jsonb
       AND NOT jsonb_path_exists(p_cur_at, '$.* ? (@ >= $d.*)', jsonb_build_object('d', p_delta_at))
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_all_newer(jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_all_newer(jsonb, jsonb) TO atlas_definer;

CREATE OR REPLACE FUNCTION public.hot_attrs_apply(
    p_tenants bigint[], p_entities bigint[], p_vals jsonb[], p_ats jsonb[])
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE sql
SET search_path = pg_catalog, public, pg_temp
AS $$
    INSERT INTO public.entity_jsonb AS j (entity_id, tenant_id, hot_attrs, hot_attrs_at)
    SELECT d.entity_id, d.tenant_id, d.vals, d.ats
    FROM unnest(p_tenants, p_entities, p_vals, p_ats) AS d (tenant_id, entity_id, vals, ats)
    ORDER BY d.entity_id, d.tenant_id
    ON CONFLICT (entity_id, tenant_id) DO UPDATE
        SET hot_attrs = CASE
                WHEN public.hot_attrs_all_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at)
                    THEN j.hot_attrs || EXCLUDED.hot_attrs
                ELSE (public.hot_attrs_merge(j.hot_attrs, j.hot_attrs_at,
                                             EXCLUDED.hot_attrs, EXCLUDED.hot_attrs_at)).hot_attrs
            END,
            hot_attrs_at = CASE
                WHEN public.hot_attrs_all_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at)
                    THEN j.hot_attrs_at || EXCLUDED.hot_attrs_at
                ELSE (public.hot_attrs_merge(j.hot_attrs, j.hot_attrs_at,
                                             EXCLUDED.hot_attrs, EXCLUDED.hot_attrs_at)).hot_attrs_at
            END,
            updated_at = CURRENT_TIMESTAMP
        WHERE public.hot_attrs_all_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at)
           OR public.hot_attrs_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at)
    RETURNING j.tenant_id, j.entity_id
$$;

-- The batch now arrives as one array of staging rows instead of ten column arrays: unnesting
-- ten arrays fills ten tuplestores on every pass (~3 ms per 5 000 values, four passes), one
-- composite array a single one (measured 75 -> 65 ms for a batch), and the general path gets
-- the same rows (only stamped with staged_at for its dead letters). The ten-array form stays,
-- as a wrapper at the end of this file, for servers of the previous release.
CREATE FUNCTION public.ingest_rows(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean,
               dead_attribute_id bigint, dead_ingested_at timestamptz, dead_reason text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
-- Plan each call for the batch at hand (see flush_moved below).
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_n    integer := coalesce(cardinality(p_rows), 0);
    v_fast boolean;
    v_t    bigint[];
    v_e    bigint[];
    v_v    jsonb[];
    v_a    jsonb[];
    v_ct   bigint[];
    v_ce   bigint[];
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF array_position(p_rows, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'ingest_rows: the batch holds a NULL row'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. Is every row valid? (the same rules as flush_moved's classification)
    SELECT bool_and(a.attribute_id IS NOT NULL AND r.ingested_at IS NOT NULL
                    AND public.value_matches_type(a.data_type, r.value, r.value_int, r.value_decimal,
                                                  r.value_bool, r.value_date, r.value_timestamp))
    INTO v_fast
    FROM unnest(p_rows) r
    LEFT JOIN public.attributes a ON a.attribute_id = r.attribute_id;
    IF v_fast THEN
        SELECT NOT EXISTS (
            SELECT 1
            FROM (SELECT DISTINCT x.tenant_id, x.entity_id FROM unnest(p_rows) x) x
            WHERE NOT EXISTS (
                SELECT 1 FROM public.entities en
                WHERE en.entity_id = x.entity_id AND en.tenant_id = x.tenant_id AND NOT en.is_deleted))
        INTO v_fast;
    END IF;

    -- 2. Store them with a plain INSERT in primary-key order (concurrent writers take keys in
    -- one order, so they cannot deadlock). Any error - above all a key already stored or twice
    -- in the batch - rolls back just this block and the batch takes the general path.
    IF v_fast THEN
        BEGIN
            INSERT INTO public.entity_values_ts (
                entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                value_date, value_timestamp, ingested_at)
            SELECT r.entity_id, r.tenant_id, r.attribute_id, r.value, r.value_int, r.value_decimal,
                   r.value_bool, r.value_date, r.value_timestamp, r.ingested_at
            FROM unnest(p_rows) r
            ORDER BY r.tenant_id, r.entity_id, r.attribute_id, r.ingested_at;
        EXCEPTION WHEN OTHERS THEN
            v_fast := FALSE;
        END;
    END IF;

    IF NOT v_fast THEN
        RETURN QUERY
        SELECT * FROM public.flush_moved(ARRAY(
            SELECT ROW(r.entity_id, r.tenant_id, r.attribute_id, r.value, r.value_int, r.value_decimal,
                       r.value_bool, r.value_date, r.value_timestamp, r.ingested_at,
                       coalesce(r.staged_at, now()))::public.entity_values_ingest
            FROM unnest(p_rows) r));
        RETURN;
    END IF;

    -- 3. Every row is stored: project the newest value of each hot attribute, one delta per
    -- entity (as flush_moved does from the rows it stored).
    SELECT array_agg(d.t), array_agg(d.e), array_agg(d.vals), array_agg(d.ats)
    INTO v_t, v_e, v_v, v_a
    FROM (
        SELECT n.t, n.e, jsonb_object_agg(n.name, n.v) AS vals, jsonb_object_agg(n.name, n.at) AS ats
        FROM (
            SELECT DISTINCT ON (r.tenant_id, r.entity_id, r.attribute_id)
                   r.tenant_id AS t, r.entity_id AS e, a.attribute_name AS name,
                   public.typed_value_jsonb(a.data_type, r.value, r.value_int, r.value_decimal,
                                            r.value_bool, r.value_date, r.value_timestamp) AS v,
                   to_jsonb((extract(epoch FROM r.ingested_at) * 1000000)::bigint) AS at
            FROM unnest(p_rows) r
            JOIN public.attributes a ON a.attribute_id = r.attribute_id AND a.is_hot
            ORDER BY r.tenant_id, r.entity_id, r.attribute_id, r.ingested_at DESC
        ) n
        GROUP BY n.t, n.e
    ) d;
    IF v_t IS NOT NULL THEN
        SELECT array_agg(h.tenant_id), array_agg(h.entity_id) INTO v_ct, v_ce
        FROM public.hot_attrs_apply(v_t, v_e, v_v, v_a) h;
    END IF;

    RETURN QUERY
    SELECT c.t, c.e, c.n, (x.e IS NOT NULL), NULL::bigint, NULL::timestamptz, NULL::text
    FROM (
        SELECT s.tenant_id AS t, s.entity_id AS e, count(*)::integer AS n FROM unnest(p_rows) s GROUP BY 1, 2
    ) c
    LEFT JOIN unnest(v_ct, v_ce) AS x (t, e) ON x.t = c.t AND x.e = c.e;
END
$$;

GRANT USAGE, CREATE ON SCHEMA public TO atlas_definer;
ALTER FUNCTION public.ingest_rows(public.entity_values_ingest[]) OWNER TO atlas_definer;
REVOKE CREATE ON SCHEMA public FROM atlas_definer;
REVOKE EXECUTE ON FUNCTION public.ingest_rows(public.entity_values_ingest[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ingest_rows(public.entity_values_ingest[]) TO atlas_app;

-- Servers of the previous release call ingest_rows with ten column arrays (0008). They keep
-- storing through the same checks while a deployment migrates first and replaces its servers
-- after, instead of failing every durable write in between. Owner and grants are 0008's.
CREATE OR REPLACE FUNCTION public.ingest_rows(
    p_entity_id bigint[], p_tenant_id bigint[], p_attribute_id bigint[], p_value text[],
    p_value_int bigint[], p_value_decimal numeric[], p_value_bool boolean[], p_value_date date[],
    p_value_timestamp timestamptz[], p_ingested_at timestamptz[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean,
               dead_attribute_id bigint, dead_ingested_at timestamptz, dead_reason text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM unnest(ARRAY[
            cardinality(p_tenant_id), cardinality(p_attribute_id), cardinality(p_value),
            cardinality(p_value_int), cardinality(p_value_decimal), cardinality(p_value_bool),
            cardinality(p_value_date), cardinality(p_value_timestamp), cardinality(p_ingested_at)]) c
        WHERE c IS DISTINCT FROM cardinality(p_entity_id))
    THEN
        RAISE EXCEPTION 'ingest_rows: the column arrays must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM public.ingest_rows(ARRAY(
        SELECT ROW(r.e, r.t, r.a, r.v, r.vi, r.vd, r.vb, r.vdt, r.vts, r.at, NULL)::public.entity_values_ingest
        FROM unnest(p_entity_id, p_tenant_id, p_attribute_id, p_value, p_value_int, p_value_decimal,
                    p_value_bool, p_value_date, p_value_timestamp, p_ingested_at)
             AS r (e, t, a, v, vi, vd, vb, vdt, vts, at)));
END
$$;

-- Plan both flushes for the batch at hand. After five calls the plan cache may switch a
-- PL/pgSQL statement to a generic plan, which estimates every unnest() at 10 rows: measured on
-- a replayed 5 000-value batch, flush_moved's classification then became a nested loop over
-- the batch (5 M join-filter rows) and 47 ms became 242 ms. Planning each call costs nothing
-- measurable at this batch size. (ingest_rows has the setting in its definition above.)
ALTER FUNCTION public.flush_moved(public.entity_values_ingest[])
    SET plan_cache_mode = force_custom_plan;
