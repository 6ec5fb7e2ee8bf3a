-- 0013: the telemetry route's entity check in one statement.
--
-- Every telemetry request checks that its entities are the caller's before anything is
-- queued. As a tenant transaction that took four round trips (BEGIN, the tenant context, the
-- SELECT, COMMIT) and, with the LSN read, 8 % of the machine at full ingest speed. This
-- function runs with its caller's rights, so the SELECT is still filtered by the tenant
-- policy; it sets the tenant context itself and puts the caller's back before it returns (an
-- error aborts the transaction or subtransaction, which reverts the setting), so no context
-- outlives the call. (A `SET app.current_tenant_id` clause would do the restoring, but setting
-- a placeholder parameter in a function definition needs a superuser in PostgreSQL 15.)
CREATE FUNCTION public.entities_known(p_tenant_id bigint, p_entity_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_caller text := current_setting('app.current_tenant_id', true);
BEGIN
    PERFORM set_config('app.current_tenant_id', p_tenant_id::text, true);
    RETURN QUERY
    SELECT e.entity_id FROM public.entities e
    WHERE e.tenant_id = p_tenant_id AND e.entity_id = ANY (p_entity_ids) AND NOT e.is_deleted;
    PERFORM set_config('app.current_tenant_id', coalesce(v_caller, ''), true);
END
$$;
REVOKE EXECUTE ON FUNCTION public.entities_known(bigint, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.entities_known(bigint, bigint[]) TO atlas_app;
