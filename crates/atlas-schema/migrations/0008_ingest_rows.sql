-- 0008: the durable ingest path without staging.
--
-- stage_flush_own (0006) finds the calling transaction's rows by scanning staging, and staging
-- accumulates dead tuples from every batch until autovacuum's next round (naptime 1 min):
-- at tens of thousands of rows/s each batch scanned millions of dead tuples (measured: 40 ms
-- for a 500-row batch). The server already holds the rows, so it passes them as binary array
-- parameters instead and they are validated, stored and projected by the same flush_moved —
-- no COPY/DELETE churn, nothing to scan. Staging remains the path of `durability=staged`
-- and of other SQL producers; stage_flush_own remains for SQL clients that want their own
-- staged rows flushed synchronously.
CREATE FUNCTION public.ingest_rows(
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
DECLARE
    v_rows public.entity_values_ingest[];
BEGIN
    IF cardinality(p_entity_id) IS DISTINCT FROM cardinality(p_ingested_at)
       OR cardinality(p_entity_id) IS DISTINCT FROM cardinality(p_tenant_id)
       OR cardinality(p_entity_id) IS DISTINCT FROM cardinality(p_attribute_id) THEN
        RAISE EXCEPTION 'ingest_rows: the column arrays must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(ROW(r.e, r.t, r.a, r.v, r.vi, r.vd, r.vb, r.vdt, r.vts, r.at, now())::public.entity_values_ingest)
    INTO v_rows
    FROM unnest(p_entity_id, p_tenant_id, p_attribute_id, p_value, p_value_int, p_value_decimal,
                p_value_bool, p_value_date, p_value_timestamp, p_ingested_at)
         AS r (e, t, a, v, vi, vd, vb, vdt, vts, at);
    RETURN QUERY SELECT * FROM public.flush_moved(v_rows);
END
$$;

GRANT USAGE, CREATE ON SCHEMA public TO atlas_definer;
ALTER FUNCTION public.ingest_rows(bigint[], bigint[], bigint[], text[], bigint[], numeric[], boolean[], date[], timestamptz[], timestamptz[])
    OWNER TO atlas_definer;
REVOKE CREATE ON SCHEMA public FROM atlas_definer;
REVOKE EXECUTE ON FUNCTION public.ingest_rows(bigint[], bigint[], bigint[], text[], bigint[], numeric[], boolean[], date[], timestamptz[], timestamptz[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ingest_rows(bigint[], bigint[], bigint[], text[], bigint[], numeric[], boolean[], date[], timestamptz[], timestamptz[])
    TO atlas_app;
