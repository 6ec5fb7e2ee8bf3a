-- projection
GRANT CREATE ON SCHEMA public TO atlas_definer;
-- Last-writer-wins merge of a delta into a projection. *_at map each attribute to the event
-- time (epoch µs) of its value. A delta key wins only when strictly newer than the stored one
-- (or the stored one has no time): late events and replays change nothing.
CREATE OR REPLACE FUNCTION public.hot_attrs_merge(
    p_cur jsonb, p_cur_at jsonb, p_delta jsonb, p_delta_at jsonb,
    OUT hot_attrs jsonb, OUT hot_attrs_at jsonb)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
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
REVOKE EXECUTE ON FUNCTION public.hot_attrs_merge(jsonb,jsonb,jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_merge(jsonb,jsonb,jsonb,jsonb) TO atlas_definer;

-- True when the delta carries at least one attribute newer than the projection: otherwise the
-- upsert is skipped and no new row version is written.
CREATE OR REPLACE FUNCTION public.hot_attrs_newer(p_cur_at jsonb, p_delta_at jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT EXISTS (
        SELECT 1 FROM jsonb_each(p_delta_at) d
        WHERE (p_cur_at -> d.key) IS NULL OR d.value > (p_cur_at -> d.key))
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_newer(jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_newer(jsonb,jsonb) TO atlas_definer;

-- The four-array form, for its other callers (hot_attr_backfill, upsert_hot_attrs): times
-- unknown, so the jsonpath test decides as before.
CREATE OR REPLACE FUNCTION public.hot_attrs_apply(
    p_tenants bigint[], p_entities bigint[], p_vals jsonb[], p_ats jsonb[])
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM public.hot_attrs_apply(p_tenants, p_entities, p_vals, p_ats, NULL::bigint[]);
END
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_apply(bigint[],bigint[],jsonb[],jsonb[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_apply(bigint[],bigint[],jsonb[],jsonb[]) TO atlas_definer;

-- Merges hot attribute values for one entity of the *current tenant* (taken from the session's
-- app.current_tenant_id, never from a parameter), last-writer-wins at p_event_time.
-- Every key must be a hot attribute and its value must fit the attribute's data_type.
-- Returns true when the projection changed.
CREATE OR REPLACE FUNCTION public.upsert_hot_attrs(p_entity_id bigint, p_delta jsonb, p_event_time timestamptz)
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
REVOKE EXECUTE ON FUNCTION public.upsert_hot_attrs(bigint,jsonb,timestamp with time zone) FROM PUBLIC;
ALTER FUNCTION public.upsert_hot_attrs(bigint,jsonb,timestamp with time zone) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.upsert_hot_attrs(bigint,jsonb,timestamp with time zone) TO atlas_app;

-- When an attribute becomes hot: projects the newest value of it of the next p_batch live
-- entities (every tenant) after (p_after_tenant, p_after_entity), in (tenant_id, entity_id)
-- order; last-writer-wins, so newer projected values stay. The caller runs batches until one
-- comes back short, counting its progress between them, in the transaction that flips
-- is_hot: the change and the whole backfill commit together. Returns one row per entity of
-- the batch, `changed` when its projection changed (for cache invalidation).
CREATE OR REPLACE FUNCTION public.hot_attr_backfill(
    p_attribute_id bigint, p_after_tenant bigint, p_after_entity bigint, p_batch integer)
RETURNS TABLE (tenant_id bigint, entity_id bigint, changed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_name text;
    v_type text;
    v_bt bigint[];
    v_be bigint[];
    v_t bigint[];
    v_e bigint[];
    v_v jsonb[];
    v_a jsonb[];
    v_ct bigint[];
    v_ce bigint[];
BEGIN
    SELECT a.attribute_name, a.data_type INTO v_name, v_type
    FROM public.attributes a WHERE a.attribute_id = p_attribute_id AND a.is_hot;
    IF v_name IS NULL OR p_batch < 1 THEN
        RETURN;
    END IF;
    SELECT array_agg(b.tenant_id ORDER BY b.tenant_id, b.entity_id),
           array_agg(b.entity_id ORDER BY b.tenant_id, b.entity_id)
    INTO v_bt, v_be
    FROM (
        SELECT en.tenant_id, en.entity_id FROM public.entities en
        WHERE (en.tenant_id, en.entity_id) > (p_after_tenant, p_after_entity) AND NOT en.is_deleted
        ORDER BY en.tenant_id, en.entity_id
        LIMIT p_batch
    ) b;
    IF v_be IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(l.tenant_id ORDER BY l.entity_id, l.tenant_id),
           array_agg(l.entity_id ORDER BY l.entity_id, l.tenant_id),
           array_agg(jsonb_build_object(v_name, l.v) ORDER BY l.entity_id, l.tenant_id),
           array_agg(jsonb_build_object(v_name, (extract(epoch FROM l.at) * 1000000)::bigint)
                     ORDER BY l.entity_id, l.tenant_id)
    INTO v_t, v_e, v_v, v_a
    FROM (
        SELECT DISTINCT ON (ev.tenant_id, ev.entity_id)
               ev.tenant_id, ev.entity_id, ev.ingested_at AS at,
               public.typed_value_jsonb(v_type, ev.value, ev.value_int, ev.value_decimal,
                                        ev.value_bool, ev.value_date, ev.value_timestamp) AS v
        FROM public.entity_values_ts ev
        JOIN public.entities en ON en.entity_id = ev.entity_id AND en.tenant_id = ev.tenant_id
        WHERE ev.attribute_id = p_attribute_id AND NOT en.is_deleted
          AND (ev.tenant_id, ev.entity_id) > (p_after_tenant, p_after_entity)
          AND (ev.tenant_id, ev.entity_id) <= (v_bt[cardinality(v_bt)], v_be[cardinality(v_be)])
        ORDER BY ev.tenant_id, ev.entity_id, ev.ingested_at DESC
    ) l;
    IF v_e IS NOT NULL THEN
        SELECT array_agg(c.tenant_id), array_agg(c.entity_id) INTO v_ct, v_ce
        FROM public.hot_attrs_apply(v_t, v_e, v_v, v_a) c;
    END IF;
    RETURN QUERY
        SELECT b.t, b.e, c.t IS NOT NULL
        FROM unnest(v_bt, v_be) b(t, e)
        LEFT JOIN unnest(v_ct, v_ce) c(t, e) ON c.t = b.t AND c.e = b.e
        ORDER BY b.t, b.e;
END
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attr_backfill(bigint,bigint,bigint,integer) FROM PUBLIC;
ALTER FUNCTION public.hot_attr_backfill(bigint,bigint,bigint,integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.hot_attr_backfill(bigint,bigint,bigint,integer) TO atlas_app;

-- When an attribute stops being hot: removes it from every projection (the time series keeps
-- every value). Returns the entities whose projection changed.
CREATE OR REPLACE FUNCTION public.hot_attr_clear(p_attribute_id bigint)
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_name text;
BEGIN
    SELECT a.attribute_name INTO v_name
    FROM public.attributes a WHERE a.attribute_id = p_attribute_id AND NOT a.is_hot;
    IF v_name IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE public.entity_jsonb j
    SET hot_attrs = j.hot_attrs - v_name, hot_attrs_at = j.hot_attrs_at - v_name,
        updated_at = CURRENT_TIMESTAMP
    WHERE j.hot_attrs ? v_name
    RETURNING j.tenant_id, j.entity_id;
END
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attr_clear(bigint) FROM PUBLIC;
ALTER FUNCTION public.hot_attr_clear(bigint) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.hot_attr_clear(bigint) TO atlas_app;

-- hot_attrs_apply concatenates when every value of a delta is newer than every value of the
-- projection and merges key by key otherwise: merging each entity's projection with a FULL
-- JOIN of jsonb_each sets costs ~35 µs an entity, a concatenation a fraction of it.

-- True when the delta has values and each of its times is newer than every time in the
-- projection: the merge is then plain concatenation. A jsonpath comparison of two sequences is
-- existential, so the path finds a projection time >= some delta time. IMMUTABLE (Citus
-- accepts only IMMUTABLE functions in an ON CONFLICT clause), so the path's variables are
-- built with jsonb_set, which is IMMUTABLE, rather than the STABLE jsonb_build_object (an
-- IMMUTABLE body with a STABLE call would never be inlined).
CREATE OR REPLACE FUNCTION public.hot_attrs_all_newer(p_cur_at jsonb, p_delta_at jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT p_delta_at <> '{}'::jsonb
       AND NOT jsonb_path_exists(p_cur_at, '$.* ? (@ >= $d.*)', jsonb_set('{"d": null}'::jsonb, '{d}', p_delta_at))
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_all_newer(jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_all_newer(jsonb,jsonb) TO atlas_definer;

-- The projection step of both flush paths: the newest value of each hot attribute per entity
-- in the batch, passed on with the delta's one time when all its values share it.
CREATE OR REPLACE FUNCTION public.hot_attrs_project(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH delta AS (
        SELECT n.t, n.e, jsonb_object_agg(n.name, n.v) AS vals, jsonb_object_agg(n.name, to_jsonb(n.at)) AS ats,
               CASE WHEN min(n.at) = max(n.at) THEN max(n.at) END AS newest
        FROM (
            SELECT DISTINCT ON (r.tenant_id, r.entity_id, r.attribute_id)
                   r.tenant_id AS t, r.entity_id AS e, a.attribute_name AS name,
                   public.typed_value_jsonb(a.data_type, r.value, r.value_int, r.value_decimal,
                                            r.value_bool, r.value_date, r.value_timestamp) AS v,
                   (extract(epoch FROM r.ingested_at) * 1000000)::bigint AS at
            FROM unnest(p_rows) r
            JOIN public.attributes a ON a.attribute_id = r.attribute_id AND a.is_hot
            ORDER BY r.tenant_id, r.entity_id, r.attribute_id, r.ingested_at DESC
        ) n
        GROUP BY n.t, n.e
    ), changed AS (
        SELECT h.tenant_id, h.entity_id
        FROM (SELECT array_agg(d.t) AS t, array_agg(d.e) AS e, array_agg(d.vals) AS vals,
                     array_agg(d.ats) AS ats, array_agg(d.newest) AS newest
              FROM delta d) x,
             LATERAL public.hot_attrs_apply(x.t, x.e, x.vals, x.ats, x.newest) h
    )
    SELECT c.t, c.e, c.n, (x.entity_id IS NOT NULL)
    FROM (
        SELECT s.tenant_id AS t, s.entity_id AS e, count(*)::integer AS n FROM unnest(p_rows) s GROUP BY 1, 2
    ) c
    LEFT JOIN changed x ON x.tenant_id = c.t AND x.entity_id = c.e;
END
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_project(entity_values_ingest[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_project(entity_values_ingest[]) TO atlas_definer;

-- The key-by-key merge leaves the newest time unknown: a late or mixed delta is rare,
-- and the next projection of the entity sets it again.
CREATE OR REPLACE FUNCTION public.hot_attrs_merge_apply(
    p_tenants bigint[], p_entities bigint[], p_vals jsonb[], p_ats jsonb[])
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    -- The merged map and times each come from one IMMUTABLE call (Citus accepts no
    -- subquery, and nothing but IMMUTABLE functions, in DO UPDATE SET); updated_at is
    -- the inserted row's default, i.e. now().
    RETURN QUERY
    INSERT INTO public.entity_jsonb AS j (entity_id, tenant_id, hot_attrs, hot_attrs_at)
    SELECT d.entity_id, d.tenant_id, d.vals, d.ats
    FROM unnest(p_tenants, p_entities, p_vals, p_ats) AS d (tenant_id, entity_id, vals, ats)
    ORDER BY d.entity_id, d.tenant_id
    ON CONFLICT (entity_id, tenant_id) DO UPDATE
        SET hot_attrs = (public.hot_attrs_merge(j.hot_attrs, j.hot_attrs_at, EXCLUDED.hot_attrs, EXCLUDED.hot_attrs_at)).hot_attrs,
            hot_attrs_at = (public.hot_attrs_merge(j.hot_attrs, j.hot_attrs_at, EXCLUDED.hot_attrs, EXCLUDED.hot_attrs_at)).hot_attrs_at,
            hot_attrs_newest = NULL,
            updated_at = EXCLUDED.updated_at
        WHERE public.hot_attrs_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at)
    RETURNING j.tenant_id, j.entity_id;
END
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_merge_apply(bigint[],bigint[],jsonb[],jsonb[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_merge_apply(bigint[],bigint[],jsonb[],jsonb[]) TO atlas_definer;

-- Applies deltas to the projection in two steps: an upsert that concatenates a delta newer
-- than the row (hot_attrs_newest against the delta's one time p_newest, NULL for a delta of
-- several times, else the jsonpath test), then the key-by-key merge for the rest. Every delta
-- is offered to the first step, so concurrent flushers lock projection rows in one global
-- order and the second step touches only rows it locked.
CREATE OR REPLACE FUNCTION public.hot_attrs_apply(
    p_tenants bigint[], p_entities bigint[], p_vals jsonb[], p_ats jsonb[], p_newest bigint[])
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_t bigint[];
    v_e bigint[];
    v_rest_t bigint[];
    v_rest_e bigint[];
    v_rest_vals jsonb[];
    v_rest_ats jsonb[];
BEGIN
    -- Step 1. The WHERE is an OR of two guarded tests, not a CASE: Citus accepts no
    -- non-IMMUTABLE function inside CASE in a modification. updated_at is the inserted
    -- row's default, now() (Citus: only IMMUTABLE functions in DO UPDATE SET).
    WITH newer AS (
        INSERT INTO public.entity_jsonb AS j (entity_id, tenant_id, hot_attrs, hot_attrs_at, hot_attrs_newest)
        SELECT d.entity_id, d.tenant_id, d.vals, d.ats, d.newest
        FROM unnest(p_tenants, p_entities, p_vals, p_ats, p_newest) AS d (tenant_id, entity_id, vals, ats, newest)
        ORDER BY d.entity_id, d.tenant_id
        ON CONFLICT (entity_id, tenant_id) DO UPDATE
            SET hot_attrs = j.hot_attrs || EXCLUDED.hot_attrs,
                hot_attrs_at = j.hot_attrs_at || EXCLUDED.hot_attrs_at,
                -- Every delta time is newer than every stored one: the delta's time is the
                -- newest now (or unknown, for a delta of several times).
                hot_attrs_newest = EXCLUDED.hot_attrs_newest,
                updated_at = EXCLUDED.updated_at
            WHERE (j.hot_attrs_newest IS NOT NULL AND EXCLUDED.hot_attrs_newest IS NOT NULL
                   AND j.hot_attrs_newest < EXCLUDED.hot_attrs_newest)
               OR ((j.hot_attrs_newest IS NULL OR EXCLUDED.hot_attrs_newest IS NULL)
                   AND public.hot_attrs_all_newer(j.hot_attrs_at, EXCLUDED.hot_attrs_at))
        RETURNING j.tenant_id, j.entity_id
    )
    SELECT array_agg(n.tenant_id), array_agg(n.entity_id) INTO v_t, v_e FROM newer n;
    IF v_t IS NOT NULL THEN
        RETURN QUERY SELECT * FROM unnest(v_t, v_e);
    END IF;

    -- Step 2: the deltas step 1 did not take, merged key by key (arrays only: no table).
    SELECT array_agg(d.tenant_id), array_agg(d.entity_id), array_agg(d.vals), array_agg(d.ats)
    INTO v_rest_t, v_rest_e, v_rest_vals, v_rest_ats
    FROM unnest(p_tenants, p_entities, p_vals, p_ats) AS d (tenant_id, entity_id, vals, ats)
    WHERE NOT EXISTS (
        SELECT 1 FROM unnest(v_t, v_e) AS n (tenant_id, entity_id)
        WHERE n.tenant_id = d.tenant_id AND n.entity_id = d.entity_id);
    IF v_rest_t IS NOT NULL THEN
        RETURN QUERY SELECT * FROM public.hot_attrs_merge_apply(v_rest_t, v_rest_e, v_rest_vals, v_rest_ats);
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION public.hot_attrs_apply(bigint[],bigint[],jsonb[],jsonb[],bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.hot_attrs_apply(bigint[],bigint[],jsonb[],jsonb[],bigint[]) TO atlas_definer;

REVOKE CREATE ON SCHEMA public FROM atlas_definer;
