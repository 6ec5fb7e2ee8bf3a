-- 0020: entities_known() is bound to the session's tenant when one is set.
--
-- 0013's function set the tenant context to whatever tenant it was given, so SQL running in
-- one tenant's transaction could ask which ids exist for another tenant. Now a caller whose
-- session already names a tenant may ask only about that tenant (anything else is refused
-- with insufficient_privilege, like a policy violation); a caller with no tenant context —
-- the server, which passes the tenant of the authenticated key and calls it outside any
-- tenant transaction to save the round trips — may name the tenant, exactly as it may call
-- set_config('app.current_tenant_id', …) itself. The function confers nothing the app role
-- lacks: it runs with the caller's rights, so the tenant policy still filters its query.
CREATE OR REPLACE FUNCTION public.entities_known(p_tenant_id bigint, p_entity_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_caller text := NULLIF(current_setting('app.current_tenant_id', true), '');
BEGIN
    IF v_caller IS NOT NULL AND v_caller <> p_tenant_id::text THEN
        RAISE EXCEPTION 'entities_known: the session''s tenant is %, not %', v_caller, p_tenant_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM set_config('app.current_tenant_id', p_tenant_id::text, true);
    RETURN QUERY
    SELECT e.entity_id FROM public.entities e
    WHERE e.tenant_id = p_tenant_id AND e.entity_id = ANY (p_entity_ids) AND NOT e.is_deleted;
    PERFORM set_config('app.current_tenant_id', coalesce(v_caller, ''), true);
END
$$;
