-- 0004: tenant isolation in the database, and the privileges of each role.
--
-- Roles (created cluster-wide by the migrator's bootstrap, not here):
--   atlas_owner   NOLOGIN, NOBYPASSRLS: owns every table; FORCE makes RLS bind it too.
--   atlas_definer NOLOGIN, BYPASSRLS: owns only the SECURITY DEFINER functions that must
--                 cross tenants (stage_flush) and holds only the grants they need.
--   atlas_app     LOGIN, NOSUPERUSER, NOBYPASSRLS: the server's login. Owns nothing; grants on
--                 parent tables only, so naming a partition directly is denied (partitions do
--                 not inherit the parent's policies).

-- A missing tenant context is NULL (current_setting(..., true) with NULLIF for the '' a reused
-- connection returns), and `tenant_id = NULL` matches no row: fail closed.
ALTER TABLE public.entities ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.entities FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.entities FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);

ALTER TABLE public.entity_values_ts ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.entity_values_ts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.entity_values_ts FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);

ALTER TABLE public.entity_jsonb ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.entity_jsonb FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.entity_jsonb FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);

-- Dead letters hold tenant data too; nobody but the owner-side roles reads them.
ALTER TABLE public.entity_values_dead_letter ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.entity_values_dead_letter FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.entity_values_dead_letter FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);

-- The tenant's rows of the stats MV. The view runs with its owner's rights on the MV (which the
-- app role is not granted); security_barrier keeps caller-supplied quals from running before
-- the tenant filter.
CREATE VIEW public.tenant_attribute_stats WITH (security_barrier) AS
SELECT s.attribute_id, s.attribute_name, s.distinct_entities, s.total_values, s.oldest, s.newest
FROM public.mv_entity_attribute_stats s
WHERE s.tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint;

-- Functions: nothing is executable by PUBLIC, now or in later migrations.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE atlas_owner IN SCHEMA public REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE atlas_definer IN SCHEMA public REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- Refreshing the stats MV runs its query as the MV's owner. Under FORCE RLS atlas_owner would
-- see no rows at all, so the MV belongs to atlas_definer (BYPASSRLS) and is refreshed only
-- through this function. CONCURRENTLY keeps tenant_attribute_stats readable during a refresh.
CREATE FUNCTION public.refresh_attribute_stats()
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

-- atlas_definer needs CREATE on the schema only for the moment ownership is handed over.
GRANT USAGE, CREATE ON SCHEMA public TO atlas_definer;
ALTER MATERIALIZED VIEW public.mv_entity_attribute_stats OWNER TO atlas_definer;
ALTER FUNCTION public.refresh_attribute_stats() OWNER TO atlas_definer;
ALTER FUNCTION public.stage_flush(integer) OWNER TO atlas_definer;
ALTER FUNCTION public.upsert_hot_attrs(bigint, jsonb, timestamptz) OWNER TO atlas_definer;
ALTER FUNCTION public.staging_stats(integer) OWNER TO atlas_definer;
REVOKE CREATE ON SCHEMA public FROM atlas_definer;
REVOKE EXECUTE ON FUNCTION public.stage_flush(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.upsert_hot_attrs(bigint, jsonb, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.refresh_attribute_stats() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.staging_stats(integer) FROM PUBLIC;
REVOKE ALL ON public.mv_entity_attribute_stats FROM PUBLIC;
GRANT SELECT ON public.mv_entity_attribute_stats TO atlas_owner;

GRANT SELECT, UPDATE, DELETE ON public.entity_values_ingest TO atlas_definer;  -- UPDATE: FOR UPDATE SKIP LOCKED
GRANT SELECT, INSERT ON public.entity_values_ts TO atlas_definer;
GRANT SELECT ON public.entities, public.attributes TO atlas_definer;
GRANT SELECT, INSERT, UPDATE ON public.entity_jsonb TO atlas_definer;
GRANT INSERT ON public.entity_values_dead_letter TO atlas_definer;
GRANT EXECUTE ON FUNCTION
    public.typed_value_jsonb(text, text, bigint, numeric, boolean, date, timestamptz),
    public.is_json_text(text),
    public.value_matches_type(text, text, bigint, numeric, boolean, date, timestamptz),
    public.jsonb_matches_type(text, jsonb),
    public.hot_attrs_merge(jsonb, jsonb, jsonb, jsonb),
    public.hot_attrs_newer(jsonb, jsonb),
    public.hot_attrs_apply(bigint[], bigint[], jsonb[], jsonb[])
TO atlas_definer;

-- The server's login. Tenant tables are read and written only under the policies above.
GRANT SELECT ON public.tenants, public.attributes TO atlas_app;
GRANT SELECT, INSERT, UPDATE ON public.entities, public.entity_jsonb TO atlas_app;
GRANT SELECT, INSERT ON public.entity_values_ts TO atlas_app;
GRANT USAGE ON SEQUENCE public.entities_entity_id_seq TO atlas_app;
GRANT INSERT ON public.entity_values_ingest TO atlas_app;
GRANT SELECT, INSERT, DELETE ON public.replication_heartbeat TO atlas_app;
GRANT USAGE ON SEQUENCE public.replication_heartbeat_id_seq TO atlas_app;
GRANT SELECT ON public.tenant_attribute_stats TO atlas_app;
GRANT EXECUTE ON FUNCTION
    public.stage_flush(integer),
    public.upsert_hot_attrs(bigint, jsonb, timestamptz),
    public.refresh_attribute_stats(),
    public.staging_stats(integer),
    public.ensure_ts_partitions(timestamptz, integer),
    public.ensure_entity_partitions(integer)
TO atlas_app;
