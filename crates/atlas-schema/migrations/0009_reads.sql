-- 0009: the read path — hot-attribute search served by the GIN index under tenant isolation,
-- and the projection kept in step when an attribute's is_hot changes.
--
-- Why search is a SECURITY DEFINER function: under RLS the planner refuses to use a
-- non-leakproof operator (@>, ?, ?|, ?&) as an index condition ahead of the policy, so the
-- app role's search filters the whole tenant after a tenant_id index scan. The definer
-- (BYPASSRLS, not a superuser) runs the same query with the tenant filter written into it,
-- taken from the session context and never from a parameter, so the GIN index applies.

-- The search statement for the given set of conditions. Built only from the fixed fragments
-- below; every value is a bind parameter ($1 tenant, $2 contains, $3 has_key, $4 has_any,
-- $5 has_all, $6 entity_type, $7 after, $8 limit). Shared by search_entities and its EXPLAIN
-- twin so the plan a test inspects is the plan the API runs.
CREATE FUNCTION public.search_entities_sql(
    p_contains boolean, p_has_key boolean, p_has_any boolean, p_has_all boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'SELECT j.entity_id, e.entity_type::text, j.hot_attrs'
        || ' FROM public.entity_jsonb j'
        || ' JOIN public.entities e ON e.entity_id = j.entity_id AND e.tenant_id = j.tenant_id'
        || ' WHERE j.tenant_id = $1 AND j.entity_id > $7 AND e.entity_id > $7 AND NOT e.is_deleted'
        || ' AND ($6::text IS NULL OR e.entity_type = $6)'
        || CASE WHEN p_contains THEN ' AND j.hot_attrs @> $2' ELSE '' END
        || CASE WHEN p_has_key  THEN ' AND j.hot_attrs ? $3'  ELSE '' END
        || CASE WHEN p_has_any  THEN ' AND j.hot_attrs ?| $4' ELSE '' END
        || CASE WHEN p_has_all  THEN ' AND j.hot_attrs ?& $5' ELSE '' END
        || ' ORDER BY j.entity_id LIMIT $8'
$$;

-- Entities of the current tenant whose hot attributes match every given condition, by id
-- after p_after, at most p_limit (1..1000). No tenant context → no rows.
--
-- EXECUTE plans every call with the actual values (a custom plan). That costs a few ms over
-- 100 hash partitions, but a cached generic plan cannot tell a condition most entities match
-- (best read in id order until the page is full: ~3 ms) from a rare one (best read from the
-- GIN index; the id-order plan scans the whole tenant: measured 178 ms at 1 M entities).
CREATE FUNCTION public.search_entities(
    p_contains jsonb, p_has_key text, p_has_any text[], p_has_all text[],
    p_entity_type text, p_after bigint, p_limit integer)
RETURNS TABLE (entity_id bigint, entity_type text, hot_attrs jsonb)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_tenant bigint := NULLIF(current_setting('app.current_tenant_id', true), '')::bigint;
BEGIN
    IF v_tenant IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE public.search_entities_sql(
            p_contains IS NOT NULL, p_has_key IS NOT NULL, p_has_any IS NOT NULL, p_has_all IS NOT NULL)
        USING v_tenant, p_contains, p_has_key, p_has_any, p_has_all, p_entity_type,
              coalesce(p_after, 0), least(greatest(coalesce(p_limit, 100), 1), 1000);
END
$$;

-- The plan search_entities runs for these arguments, as its definer (for tests and operators;
-- not granted to the app role: estimated row counts describe every tenant's data).
CREATE FUNCTION public.search_entities_plan(
    p_contains jsonb, p_has_key text, p_has_any text[], p_has_all text[],
    p_entity_type text, p_after bigint, p_limit integer)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_tenant bigint := NULLIF(current_setting('app.current_tenant_id', true), '')::bigint;
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN ' || public.search_entities_sql(
            p_contains IS NOT NULL, p_has_key IS NOT NULL, p_has_any IS NOT NULL, p_has_all IS NOT NULL)
        USING v_tenant, p_contains, p_has_key, p_has_any, p_has_all, p_entity_type,
              coalesce(p_after, 0), least(greatest(coalesce(p_limit, 100), 1), 1000);
END
$$;

-- When an attribute becomes hot: projects each live entity's newest value of it (every
-- tenant; last-writer-wins, so newer projected values stay). Returns the entities whose
-- projection changed, for cache invalidation. Runs in the caller's transaction, which also
-- flips is_hot, so the change and the backfill commit together.
CREATE FUNCTION public.hot_attr_backfill(p_attribute_id bigint)
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_name text;
    v_type text;
    v_t bigint[];
    v_e bigint[];
    v_v jsonb[];
    v_a jsonb[];
BEGIN
    SELECT a.attribute_name, a.data_type INTO v_name, v_type
    FROM public.attributes a WHERE a.attribute_id = p_attribute_id AND a.is_hot;
    IF v_name IS NULL THEN
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
        ORDER BY ev.tenant_id, ev.entity_id, ev.ingested_at DESC
    ) l;
    IF v_e IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM public.hot_attrs_apply(v_t, v_e, v_v, v_a);
END
$$;

-- When an attribute stops being hot: removes it from every projection (the time series keeps
-- every value). Returns the entities whose projection changed.
CREATE FUNCTION public.hot_attr_clear(p_attribute_id bigint)
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

GRANT USAGE, CREATE ON SCHEMA public TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.search_entities_sql(boolean, boolean, boolean, boolean) TO atlas_definer;
ALTER FUNCTION public.search_entities(jsonb, text, text[], text[], text, bigint, integer) OWNER TO atlas_definer;
ALTER FUNCTION public.search_entities_plan(jsonb, text, text[], text[], text, bigint, integer) OWNER TO atlas_definer;
ALTER FUNCTION public.hot_attr_backfill(bigint) OWNER TO atlas_definer;
ALTER FUNCTION public.hot_attr_clear(bigint) OWNER TO atlas_definer;
REVOKE CREATE ON SCHEMA public FROM atlas_definer;
-- The backfill reads every tenant's series; the clear rewrites every tenant's projection.
GRANT SELECT ON public.entity_values_ts TO atlas_definer;

-- Explicitly, function by function: 0004's schema-scoped default privileges cannot take away
-- PostgreSQL's global default EXECUTE for PUBLIC (per-schema defaults only add).
REVOKE EXECUTE ON FUNCTION
    public.search_entities_sql(boolean, boolean, boolean, boolean),
    public.search_entities(jsonb, text, text[], text[], text, bigint, integer),
    public.search_entities_plan(jsonb, text, text[], text[], text, bigint, integer),
    public.hot_attr_backfill(bigint),
    public.hot_attr_clear(bigint)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    public.search_entities(jsonb, text, text[], text[], text, bigint, integer),
    public.hot_attr_backfill(bigint),
    public.hot_attr_clear(bigint)
TO atlas_app;
