-- Reads that need the definer's rights: search through the GIN index, the stats view's
-- refresh, and which entity ids a tenant has.
GRANT CREATE ON SCHEMA public TO atlas_definer;
-- Refreshing the stats MV runs its query as the MV's owner. Under FORCE RLS atlas_owner would
-- see no rows at all, so the MV belongs to atlas_definer (BYPASSRLS) and is refreshed only
-- through this function. CONCURRENTLY keeps tenant_attribute_stats readable during a refresh.
CREATE OR REPLACE FUNCTION public.refresh_attribute_stats()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv_entity_attribute_stats;
    SELECT count(*) INTO v_rows FROM public.mv_entity_attribute_stats;
    RETURN v_rows;
END
$$;
REVOKE EXECUTE ON FUNCTION public.refresh_attribute_stats() FROM PUBLIC;
ALTER FUNCTION public.refresh_attribute_stats() OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.refresh_attribute_stats() TO atlas_app;

-- Why search is a SECURITY DEFINER function: under RLS the planner refuses to use a
-- non-leakproof operator (@>, ?, ?|, ?&) as an index condition ahead of the policy, so the
-- app role's search filters the whole tenant after a tenant_id index scan. The definer
-- (BYPASSRLS, not a superuser) runs the same query with the tenant filter written into it,
-- taken from the session context and never from a parameter, so the GIN index applies.

-- The search statement for the given set of conditions. Built only from the fixed fragments
-- below; every value is a bind parameter ($1 tenant, $2 contains, $3 has_key, $4 has_any,
-- $5 has_all, $6 entity_type, $7 after, $8 limit). Shared by search_entities and its EXPLAIN
-- twin so the plan a test inspects is the plan the API runs.
CREATE OR REPLACE FUNCTION public.search_entities_sql(
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
REVOKE EXECUTE ON FUNCTION public.search_entities_sql(boolean,boolean,boolean,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.search_entities_sql(boolean,boolean,boolean,boolean) TO atlas_definer;

-- Entities of the current tenant whose hot attributes match every given condition, by id
-- after p_after, at most p_limit (1..1000). No tenant context → no rows.
--
-- EXECUTE plans every call with the actual values (a custom plan). That costs a few ms over
-- 100 hash partitions, but a cached generic plan cannot tell a condition most entities match
-- (best read in id order until the page is full: ~3 ms) from a rare one (best read from the
-- GIN index; the id-order plan scans the whole tenant: measured 178 ms at 1 M entities).
CREATE OR REPLACE FUNCTION public.search_entities(
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
REVOKE EXECUTE ON FUNCTION public.search_entities(jsonb,text,text[],text[],text,bigint,integer) FROM PUBLIC;
ALTER FUNCTION public.search_entities(jsonb,text,text[],text[],text,bigint,integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.search_entities(jsonb,text,text[],text[],text,bigint,integer) TO atlas_app;

-- The plan search_entities runs for these arguments, as its definer (for tests and operators;
-- not granted to the app role: estimated row counts describe every tenant's data).
CREATE OR REPLACE FUNCTION public.search_entities_plan(
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
REVOKE EXECUTE ON FUNCTION public.search_entities_plan(jsonb,text,text[],text[],text,bigint,integer) FROM PUBLIC;
ALTER FUNCTION public.search_entities_plan(jsonb,text,text[],text[],text,bigint,integer) OWNER TO atlas_definer;

-- Which of the given entity ids exist for the tenant. Bound to the session's tenant when one
-- is set: a caller whose session already names a tenant may ask only about that tenant
-- (anything else is refused with insufficient_privilege, like a policy violation); a caller
-- with no tenant context - the server, which passes the tenant of the authenticated key and
-- calls it outside any tenant transaction to save the round trips - may name the tenant,
-- exactly as it may SET LOCAL app.current_tenant_id itself. So the function confers nothing
-- the app role lacks.
-- For the definer functions that answer for the tenant they are given: refuses a session
-- whose own tenant context names another tenant (insufficient_privilege, naming `p_function`).
-- A session without a context may ask (the server's own calls outside a tenant transaction).
CREATE OR REPLACE FUNCTION public.assert_session_tenant(p_tenant_id bigint, p_function text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_caller text := NULLIF(current_setting('app.current_tenant_id', true), '');
BEGIN
    IF v_caller IS NOT NULL AND v_caller <> p_tenant_id::text THEN
        RAISE EXCEPTION '%: the session''s tenant is %, not %', p_function, v_caller, p_tenant_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION public.assert_session_tenant(bigint,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.assert_session_tenant(bigint,text) TO atlas_definer;

-- SECURITY DEFINER with the tenant written into the query, rather than setting the tenant
-- context for an invoker's query: on a Citus coordinator a tenant set inside a function
-- called outside a transaction block never reaches the shards (set_config is not propagated,
-- and SET LOCAL only within a transaction block), so the shards' policies would hide every row.
CREATE OR REPLACE FUNCTION public.entities_known(p_tenant_id bigint, p_entity_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.assert_session_tenant(p_tenant_id, 'entities_known');
    RETURN QUERY
    SELECT e.entity_id FROM public.entities e
    WHERE e.tenant_id = p_tenant_id AND e.entity_id = ANY (p_entity_ids) AND NOT e.is_deleted;
END
$$;
REVOKE EXECUTE ON FUNCTION public.entities_known(bigint,bigint[]) FROM PUBLIC;
ALTER FUNCTION public.entities_known(bigint,bigint[]) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.entities_known(bigint,bigint[]) TO atlas_app;

-- A tenant's dead letters, newest first, a page at a time after (p_before, p_before_id):
-- readings the flush could not store, with why. The app role cannot read the table itself
-- (it holds other tenants' failures); this answers for the tenant it is given, and refuses a
-- session whose own tenant context names another.
CREATE OR REPLACE FUNCTION public.tenant_dead_letters(
    p_tenant_id bigint, p_before timestamptz, p_before_id bigint, p_limit integer)
RETURNS TABLE (dead_letter_id bigint, entity_id bigint, attribute_name text, value text,
               ingested_at timestamptz, reason text, failed_at timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.assert_session_tenant(p_tenant_id, 'tenant_dead_letters');
    RETURN QUERY
    SELECT d.dead_letter_id, d.entity_id, a.attribute_name::text,
           coalesce(d.value, d.value_int::text, trim_scale(d.value_decimal)::text,
                    d.value_bool::text, d.value_date::text, d.value_timestamp::text),
           d.ingested_at, d.reason, d.failed_at
    FROM public.entity_values_dead_letter d
    LEFT JOIN public.attributes a ON a.attribute_id = d.attribute_id
    WHERE d.tenant_id = p_tenant_id
      AND (p_before IS NULL OR (d.failed_at, d.dead_letter_id) < (p_before, p_before_id))
    ORDER BY d.failed_at DESC, d.dead_letter_id DESC
    LIMIT p_limit;
END
$$;
REVOKE EXECUTE ON FUNCTION public.tenant_dead_letters(bigint,timestamptz,bigint,integer) FROM PUBLIC;
ALTER FUNCTION public.tenant_dead_letters(bigint,timestamptz,bigint,integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.tenant_dead_letters(bigint,timestamptz,bigint,integer) TO atlas_app;

REVOKE CREATE ON SCHEMA public FROM atlas_definer;
