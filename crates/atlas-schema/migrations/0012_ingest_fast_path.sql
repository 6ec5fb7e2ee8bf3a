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

-- Stored rows -> one summary row per (tenant, entity): how many values, and whether its hot
-- projection changed, after applying the newest value of each hot attribute (one delta per
-- entity, typed JSON, event times in microseconds). The one projection step of both flush
-- paths: ingest_rows' fast path and flush_moved. Runs with its caller's rights. SQL, not
-- PL/pgSQL: PL/pgSQL expands an array argument on entry, which cost ~3 % of durable
-- throughput in the benchmark; as SQL it measured the same as the inline version.
CREATE FUNCTION public.hot_attrs_project(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean)
LANGUAGE sql
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
    WITH delta AS (
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
    ), changed AS (
        SELECT h.tenant_id, h.entity_id
        FROM (SELECT array_agg(d.t) AS t, array_agg(d.e) AS e, array_agg(d.vals) AS vals,
                     array_agg(d.ats) AS ats
              FROM delta d) x,
             LATERAL public.hot_attrs_apply(x.t, x.e, x.vals, x.ats) h
    )
    SELECT c.t, c.e, c.n, (x.entity_id IS NOT NULL)
    FROM (
        SELECT s.tenant_id AS t, s.entity_id AS e, count(*)::integer AS n FROM unnest(p_rows) s GROUP BY 1, 2
    ) c
    LEFT JOIN changed x ON x.tenant_id = c.t AND x.entity_id = c.e
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_project(public.entity_values_ingest[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_project(public.entity_values_ingest[]) TO atlas_definer;

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

    -- 3. Every row is stored: project them.
    RETURN QUERY
    SELECT p.tenant_id, p.entity_id, p.stored, p.hot_changed, NULL::bigint, NULL::timestamptz, NULL::text
    FROM public.hot_attrs_project(p_rows) p;
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

-- flush_moved (0006) as before, projecting through hot_attrs_project, and planned for the batch
-- at hand like the functions above: after five calls the plan cache may switch a PL/pgSQL
-- statement to a generic plan, which estimates every unnest() at 10 rows - measured on a
-- replayed 5 000-value batch, the classification then became a nested loop over the batch
-- (5 M join-filter rows) and 47 ms became 242 ms. Planning each call costs nothing measurable
-- at this batch size.
CREATE OR REPLACE FUNCTION public.flush_moved(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean,
               dead_attribute_id bigint, dead_ingested_at timestamptz, dead_reason text)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_good   public.entity_values_ingest[];
    v_stored public.entity_values_ingest[];
    v_row    public.entity_values_ingest;
    v_hit    integer;
    v_dead   public.entity_values_dead_letter[];
    v_dl     public.entity_values_dead_letter;
BEGIN
    IF p_rows IS NULL OR cardinality(p_rows) = 0 THEN
        RETURN;
    END IF;

    -- Validate (see 0003): attribute, value column for its type, entity of the row's tenant.
    WITH r AS (
        SELECT * FROM unnest(p_rows)
    ), owned AS (
        SELECT x.tenant_id, x.entity_id
        FROM (SELECT DISTINCT r.tenant_id, r.entity_id FROM r) x
        WHERE EXISTS (
            SELECT 1 FROM public.entities e
            WHERE e.entity_id = x.entity_id AND e.tenant_id = x.tenant_id AND NOT e.is_deleted)
    ), classified AS (
        SELECT r.*,
               CASE
                   WHEN a.attribute_id IS NULL THEN 'unknown attribute_id'
                   WHEN NOT public.value_matches_type(a.data_type, r.value, r.value_int, r.value_decimal,
                                                      r.value_bool, r.value_date, r.value_timestamp)
                       THEN 'value does not match data_type ' || a.data_type
                           || ' (exactly one matching value column must be set)'
                   WHEN o.entity_id IS NULL THEN 'entity does not exist for this tenant'
               END AS reason
        FROM r
        LEFT JOIN public.attributes a ON a.attribute_id = r.attribute_id
        LEFT JOIN owned o ON o.tenant_id = r.tenant_id AND o.entity_id = r.entity_id
    ), dead AS (
        INSERT INTO public.entity_values_dead_letter (
            entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
            value_date, value_timestamp, ingested_at, staged_at, reason)
        SELECT c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal, c.value_bool,
               c.value_date, c.value_timestamp, c.ingested_at, c.staged_at, c.reason
        FROM classified c WHERE c.reason IS NOT NULL
        RETURNING *
    ), good AS (
        SELECT array_agg(ROW(c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal,
                             c.value_bool, c.value_date, c.value_timestamp, c.ingested_at, c.staged_at
                         )::public.entity_values_ingest
                         ORDER BY c.tenant_id, c.entity_id, c.attribute_id, c.ingested_at) AS rows
        FROM classified c WHERE c.reason IS NULL
    )
    SELECT good.rows, (SELECT array_agg(d) FROM dead d) INTO v_good, v_dead FROM good;

    -- Store in primary-key order; a failing set insert falls back to row by row.
    IF v_good IS NOT NULL THEN
        BEGIN
            WITH ins AS (
                INSERT INTO public.entity_values_ts (
                    entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                    value_date, value_timestamp, ingested_at)
                SELECT g.entity_id, g.tenant_id, g.attribute_id, g.value, g.value_int, g.value_decimal,
                       g.value_bool, g.value_date, g.value_timestamp, g.ingested_at
                FROM unnest(v_good) WITH ORDINALITY AS g
                ORDER BY g.ordinality
                ON CONFLICT DO NOTHING
                RETURNING entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                          value_date, value_timestamp, ingested_at
            )
            SELECT array_agg(ROW(ins.entity_id, ins.tenant_id, ins.attribute_id, ins.value, ins.value_int,
                                 ins.value_decimal, ins.value_bool, ins.value_date, ins.value_timestamp,
                                 ins.ingested_at, NULL)::public.entity_values_ingest)
            INTO v_stored FROM ins;
        EXCEPTION WHEN OTHERS THEN
            v_stored := NULL;
            FOREACH v_row IN ARRAY v_good LOOP
                BEGIN
                    INSERT INTO public.entity_values_ts (
                        entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                        value_date, value_timestamp, ingested_at)
                    VALUES (v_row.entity_id, v_row.tenant_id, v_row.attribute_id, v_row.value, v_row.value_int,
                            v_row.value_decimal, v_row.value_bool, v_row.value_date, v_row.value_timestamp,
                            v_row.ingested_at)
                    ON CONFLICT DO NOTHING
                    RETURNING 1 INTO v_hit;
                    IF FOUND THEN
                        v_stored := v_stored || v_row;
                    END IF;
                EXCEPTION WHEN OTHERS THEN
                    INSERT INTO public.entity_values_dead_letter (
                        entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                        value_date, value_timestamp, ingested_at, staged_at, reason)
                    VALUES (v_row.entity_id, v_row.tenant_id, v_row.attribute_id, v_row.value, v_row.value_int,
                            v_row.value_decimal, v_row.value_bool, v_row.value_date, v_row.value_timestamp,
                            v_row.ingested_at, v_row.staged_at, SQLERRM)
                    RETURNING * INTO v_dl;
                    v_dead := v_dead || v_dl;
                END;
            END LOOP;
        END;
    END IF;

    -- Project the newest stored value of each hot attribute, one delta per entity.
    IF v_stored IS NOT NULL THEN
        RETURN QUERY
        SELECT p.tenant_id, p.entity_id, p.stored, p.hot_changed, NULL::bigint, NULL::timestamptz, NULL::text
        FROM public.hot_attrs_project(v_stored) p;
    END IF;

    IF v_dead IS NOT NULL THEN
        RETURN QUERY
        SELECT d.tenant_id, d.entity_id, 0, FALSE, d.attribute_id, d.ingested_at, d.reason
        FROM unnest(v_dead) d;
    END IF;
END
$$;
