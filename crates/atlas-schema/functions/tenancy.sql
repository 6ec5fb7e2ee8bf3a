-- Tenancy: how a session names its tenant. Applied to the main database and to the
-- analytics store alike (both filter every tenant table by app.current_tenant_id), so the
-- server sets the tenant the same way in both.
-- Sets the tenant of the current transaction: SET LOCAL app.current_tenant_id, which the
-- server cannot send with a bind parameter (SET takes none) and will not format into a
-- statement itself. SET LOCAL rather than set_config(): on a Citus coordinator (with
-- citus.propagate_set_commands = 'local', set on the app login by the migrator) only SET LOCAL
-- in a transaction block reaches the workers, whose shards' policies read it; set_config would
-- leave every shard without a tenant (0 rows - closed, but nothing works). Outside a
-- transaction block it lasts for the calling statement only, so no context outlives a request.
-- Confers nothing: any session may SET its own app.current_tenant_id.
CREATE OR REPLACE FUNCTION public.set_tenant(p_tenant_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'set_tenant: the tenant id is NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SET LOCAL app.current_tenant_id = %L', p_tenant_id::text);
END
$$;
REVOKE EXECUTE ON FUNCTION public.set_tenant(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.set_tenant(bigint) TO atlas_app;
