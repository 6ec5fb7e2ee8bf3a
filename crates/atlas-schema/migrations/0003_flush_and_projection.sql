-- 0003: moving staged rows into the time series, and the hot-attribute projection.
--
-- stage_flush and upsert_hot_attrs are SECURITY DEFINER functions owned by atlas_definer, a
-- NOLOGIN role with BYPASSRLS and only the grants these functions need (0004): stage_flush
-- moves rows of every tenant, which no tenant-scoped policy could allow. Hardening, per
-- ARCHITECTURE.md: search_path pinned to pg_catalog first (operators and functions cannot be
-- shadowed), pg_temp last (a TEMP table named like a real one cannot shadow it), every name
-- schema-qualified, EXECUTE revoked from PUBLIC, and upsert_hot_attrs takes the tenant from
-- the session context, never from a parameter.
--
-- The seed's `SET LOCAL synchronous_commit = OFF` is deliberately absent: acknowledgements
-- are given after the flush commits, so the commit must be durable.

-- The JSON form of a typed value, so the projection is typed: 8, not "8" (containment is
-- type-sensitive). Decimals lose trailing zeros; dates and timestamps are RFC 3339 strings in UTC.
CREATE FUNCTION public.typed_value_jsonb(
    p_data_type text, p_value text, p_int bigint, p_dec numeric, p_bool boolean, p_date date, p_ts timestamptz)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE p_data_type
        WHEN 'string'    THEN to_jsonb(p_value)
        WHEN 'json'      THEN p_value::jsonb
        WHEN 'integer'   THEN to_jsonb(p_int)
        WHEN 'decimal'   THEN to_jsonb(trim_scale(p_dec))
        WHEN 'boolean'   THEN to_jsonb(p_bool)
        WHEN 'date'      THEN to_jsonb(to_char(p_date, 'YYYY-MM-DD'))
        WHEN 'timestamp' THEN to_jsonb(to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    END
$$;

-- True when text parses as JSON (PostgreSQL 15 has no IS JSON predicate).
CREATE FUNCTION public.is_json_text(p_text text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM p_text::jsonb;
    RETURN TRUE;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN FALSE;
END
$$;

-- True when a staged row sets exactly the one column its attribute's data_type uses.
CREATE FUNCTION public.value_matches_type(
    p_data_type text, p_value text, p_int bigint, p_dec numeric, p_bool boolean, p_date date, p_ts timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT num_nonnulls(p_value, p_int, p_dec, p_bool, p_date, p_ts) = 1
       AND CASE p_data_type
               WHEN 'string'    THEN p_value IS NOT NULL
               WHEN 'json'      THEN p_value IS NOT NULL AND public.is_json_text(p_value)
               WHEN 'integer'   THEN p_int IS NOT NULL
               WHEN 'decimal'   THEN p_dec IS NOT NULL AND p_dec <> 'NaN'::numeric
               WHEN 'boolean'   THEN p_bool IS NOT NULL
               WHEN 'date'      THEN p_date IS NOT NULL
               WHEN 'timestamp' THEN p_ts IS NOT NULL
               ELSE FALSE
           END
$$;

-- True when a JSON value is acceptable for a data_type (used by upsert_hot_attrs).
CREATE FUNCTION public.jsonb_matches_type(p_data_type text, p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE p_data_type
        WHEN 'string'    THEN jsonb_typeof(p_value) = 'string'
        WHEN 'json'      THEN p_value IS NOT NULL
        WHEN 'integer'   THEN jsonb_typeof(p_value) = 'number'
                              AND (p_value #>> '{}')::numeric = trunc((p_value #>> '{}')::numeric)
                              AND (p_value #>> '{}')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
        WHEN 'decimal'   THEN jsonb_typeof(p_value) = 'number'
        WHEN 'boolean'   THEN jsonb_typeof(p_value) = 'boolean'
        WHEN 'date'      THEN jsonb_typeof(p_value) = 'string'
        WHEN 'timestamp' THEN jsonb_typeof(p_value) = 'string'
        ELSE FALSE
    END
$$;

-- Last-writer-wins merge of a delta into a projection. *_at map each attribute to the event
-- time (epoch µs) of its value. A delta key wins only when strictly newer than the stored one
-- (or the stored one has no time): late events and replays change nothing.
CREATE FUNCTION public.hot_attrs_merge(
    p_cur jsonb, p_cur_at jsonb, p_delta jsonb, p_delta_at jsonb,
    OUT hot_attrs jsonb, OUT hot_attrs_at jsonb)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(s.k, s.v), '{}'::jsonb),
           coalesce(jsonb_object_agg(s.k, s.t) FILTER (WHERE s.t IS NOT NULL), '{}'::jsonb)
    FROM (
        SELECT coalesce(c.key, d.key) AS k,
               CASE WHEN d.key IS NOT NULL AND (c.key IS NULL OR c.t IS NULL OR d.t > c.t) THEN d.v ELSE c.v END AS v,
               CASE WHEN d.key IS NOT NULL AND (c.key IS NULL OR c.t IS NULL OR d.t > c.t) THEN d.t ELSE c.t END AS t
        FROM (SELECT e.key, e.value AS v, p_cur_at -> e.key AS t FROM jsonb_each(p_cur) e) c
        FULL JOIN (SELECT e.key, e.value AS v, p_delta_at -> e.key AS t FROM jsonb_each(p_delta) e) d
            ON c.key = d.key
    ) s
$$;

-- True when the delta carries at least one attribute newer than the projection: otherwise the
-- upsert is skipped and no new row version is written.
CREATE FUNCTION public.hot_attrs_newer(p_cur_at jsonb, p_delta_at jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM jsonb_each(p_delta_at) d
        WHERE (p_cur_at -> d.key) IS NULL OR d.value > (p_cur_at -> d.key))
$$;

-- Applies one delta per entity in (entity_id, tenant_id) order, so concurrent flushers lock
-- projection rows in one global order and cannot deadlock. Returns the entities whose
-- projection changed (for cache invalidation). Runs with its caller's rights.
CREATE FUNCTION public.hot_attrs_apply(
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
        SET (hot_attrs, hot_attrs_at) = (
                SELECT m.hot_attrs, m.hot_attrs_at
                FROM public.hot_attrs_merge(j.hot_attrs, j.hot_attrs_at, EXCLUDED.hot_attrs, EXCLUDED.hot_attrs_at) m),
            updated_at = CURRENT_TIMESTAMP
        WHERE public.hot_attrs_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at)
    RETURNING j.tenant_id, j.entity_id
$$;

-- Moves up to p_limit staged rows into entity_values_ts and projects their hot attributes.
--
-- Atomic and safe with any number of concurrent callers: rows are claimed with
-- FOR UPDATE SKIP LOCKED and deleted in the same statement (the seed's separate DELETE removed
-- rows committed after its INSERT…SELECT). Inserts run in primary-key order with
-- ON CONFLICT DO NOTHING: replays and in-batch duplicates store nothing, and two flushers
-- holding the same keys wait for each other in one order instead of deadlocking.
-- Poison rows go to entity_values_dead_letter with the reason; the flush goes on.
-- Returns one row per (tenant, entity) that stored values: how many, and whether its hot
-- projection changed.
CREATE FUNCTION public.stage_flush(p_limit integer DEFAULT 50000)
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
    v_rows   public.entity_values_ingest[];
    v_good   public.entity_values_ingest[];
    v_stored public.entity_values_ingest[];
    v_row    public.entity_values_ingest;
    v_hit    integer;
    v_t      bigint[];
    v_e      bigint[];
    v_v      jsonb[];
    v_a      jsonb[];
    v_ct     bigint[];
    v_ce     bigint[];
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'stage_flush: p_limit must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. Claim and remove a batch in one statement.
    WITH moved AS (
        DELETE FROM public.entity_values_ingest s
        WHERE s.ctid = ANY (ARRAY(
            SELECT i.ctid FROM public.entity_values_ingest i LIMIT p_limit FOR UPDATE SKIP LOCKED))
        RETURNING s AS r
    )
    SELECT array_agg(moved.r) INTO v_rows FROM moved;
    IF v_rows IS NULL THEN
        RETURN;
    END IF;

    -- 2. Validate: known attribute, the right value column for its type, and an entity that
    --    exists, is not deleted and belongs to the row's tenant (staging has no RLS, so this is
    --    where a producer's tenant_id is checked). Failures go to the dead-letter table.
    WITH r AS (
        SELECT * FROM unnest(v_rows)
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
    )
    SELECT array_agg(ROW(c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal,
                         c.value_bool, c.value_date, c.value_timestamp, c.ingested_at, c.staged_at
                     )::public.entity_values_ingest
                     ORDER BY c.tenant_id, c.entity_id, c.attribute_id, c.ingested_at)
    INTO v_good
    FROM classified c WHERE c.reason IS NULL;

    -- 3. Store, in primary-key order. A failure of the set-based insert (e.g. a time with no
    --    partition) falls back to row by row so only the failing rows are dead-lettered.
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
                            v_row.ingested_at, v_row.staged_at, SQLERRM);
                END;
            END LOOP;
        END;
    END IF;
    IF v_stored IS NULL THEN
        RETURN;
    END IF;

    -- 4. Project: per entity one delta with the newest stored value of each hot attribute.
    SELECT array_agg(d.tenant_id), array_agg(d.entity_id), array_agg(d.vals), array_agg(d.ats)
    INTO v_t, v_e, v_v, v_a
    FROM (
        SELECT n.tenant_id, n.entity_id,
               jsonb_object_agg(n.attribute_name, n.v) AS vals,
               jsonb_object_agg(n.attribute_name, n.t) AS ats
        FROM (
            SELECT DISTINCT ON (s.tenant_id, s.entity_id, s.attribute_id)
                   s.tenant_id, s.entity_id, a.attribute_name,
                   public.typed_value_jsonb(a.data_type, s.value, s.value_int, s.value_decimal, s.value_bool,
                                            s.value_date, s.value_timestamp) AS v,
                   to_jsonb((extract(epoch FROM s.ingested_at) * 1000000)::bigint) AS t
            FROM unnest(v_stored) s
            JOIN public.attributes a ON a.attribute_id = s.attribute_id AND a.is_hot
            ORDER BY s.tenant_id, s.entity_id, s.attribute_id, s.ingested_at DESC
        ) n
        GROUP BY n.tenant_id, n.entity_id
    ) d;
    IF v_t IS NOT NULL THEN
        SELECT array_agg(h.tenant_id), array_agg(h.entity_id) INTO v_ct, v_ce
        FROM public.hot_attrs_apply(v_t, v_e, v_v, v_a) h;
    END IF;

    RETURN QUERY
    SELECT c.tenant_id, c.entity_id, c.n, (x.e IS NOT NULL)
    FROM (
        SELECT s.tenant_id, s.entity_id, count(*)::integer AS n FROM unnest(v_stored) s GROUP BY 1, 2
    ) c
    LEFT JOIN unnest(v_ct, v_ce) AS x (t, e) ON x.t = c.tenant_id AND x.e = c.entity_id;
END
$$;

-- Merges hot attribute values for one entity of the *current tenant* (taken from the session's
-- app.current_tenant_id, never from a parameter), last-writer-wins at p_event_time.
-- Every key must be a hot attribute and its value must fit the attribute's data_type.
-- Returns true when the projection changed.
CREATE FUNCTION public.upsert_hot_attrs(p_entity_id bigint, p_delta jsonb, p_event_time timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_tenant  bigint := NULLIF(current_setting('app.current_tenant_id', true), '')::bigint;
    v_bad     text;
    v_at      jsonb;
    v_changed boolean := FALSE;
BEGIN
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'upsert_hot_attrs: no tenant context (app.current_tenant_id is not set)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_entity_id IS NULL OR p_event_time IS NULL OR p_delta IS NULL OR jsonb_typeof(p_delta) <> 'object' THEN
        RAISE EXCEPTION 'upsert_hot_attrs: entity id, event time and a JSON object delta are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM public.entities e
        WHERE e.entity_id = p_entity_id AND e.tenant_id = v_tenant AND NOT e.is_deleted
    ) THEN
        RAISE EXCEPTION 'upsert_hot_attrs: entity % not found', p_entity_id USING ERRCODE = 'no_data_found';
    END IF;
    SELECT d.key INTO v_bad
    FROM jsonb_each(p_delta) d
    LEFT JOIN public.attributes a ON a.attribute_name = d.key AND a.is_hot
    WHERE a.attribute_id IS NULL OR NOT public.jsonb_matches_type(a.data_type, d.value)
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'upsert_hot_attrs: "%" is not a hot attribute or its value does not fit its data_type', v_bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_delta = '{}'::jsonb THEN
        RETURN FALSE;
    END IF;
    SELECT jsonb_object_agg(k, to_jsonb((extract(epoch FROM p_event_time) * 1000000)::bigint))
    INTO v_at FROM jsonb_object_keys(p_delta) k;
    SELECT TRUE INTO v_changed
    FROM public.hot_attrs_apply(ARRAY[v_tenant], ARRAY[p_entity_id], ARRAY[p_delta], ARRAY[v_at]);
    RETURN coalesce(v_changed, FALSE);
END
$$;

-- Staging backlog for monitoring and drain loops, bounded so it stays cheap under a large
-- backlog: counts at most p_cap rows (a result equal to p_cap means "at least"), and the
-- oldest staged_at among them. The app role cannot read staging itself.
CREATE FUNCTION public.staging_stats(p_cap integer DEFAULT 1000000, OUT backlog bigint, OUT oldest_staged_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT count(*), min(s.staged_at)
    FROM (SELECT i.staged_at FROM public.entity_values_ingest i LIMIT greatest(p_cap, 1)) s
$$;
