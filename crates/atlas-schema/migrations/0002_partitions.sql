-- 0002: partition management, done by Atlas itself (the seed uses pg_partman; Atlas runs on any
-- PostgreSQL 15 without extensions). These functions are SECURITY DEFINER owned by
-- atlas_owner so the server's maintainer, logged in as atlas_app, can premake partitions
-- without owning anything. They take no identifiers from the caller: names are derived from
-- dates and integers.

-- Creates the monthly partitions of entity_values_ts covering the month of p_at and the
-- p_months_ahead months after it. Bounds are UTC midnights on the first of the month.
-- Returns the names it created (none when all exist).
CREATE FUNCTION public.ensure_ts_partitions(p_at timestamptz DEFAULT now(), p_months_ahead integer DEFAULT 2)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_first timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');
    v_lo    timestamp;
    v_hi    timestamp;
    v_name  text;
BEGIN
    IF p_at IS NULL OR p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN
        RAISE EXCEPTION 'ensure_ts_partitions: p_months_ahead must be between 0 and 120'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 0..p_months_ahead LOOP
        v_lo := v_first + make_interval(months => i);
        v_hi := v_lo + interval '1 month';
        v_name := 'entity_values_' || to_char(v_lo, 'YYYY_MM');
        IF to_regclass('public.' || quote_ident(v_name)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE public.%I PARTITION OF public.entity_values_ts FOR VALUES FROM (%L) TO (%L)',
                v_name, to_char(v_lo, 'YYYY-MM-DD') || ' 00:00:00+00', to_char(v_hi, 'YYYY-MM-DD') || ' 00:00:00+00');
            RETURN NEXT v_name;
        END IF;
    END LOOP;
END
$$;

-- Creates entities partitions (1 M ids each) from 0 up to p_ahead partitions beyond the one
-- holding the sequence's current value. Returns the names it created.
CREATE FUNCTION public.ensure_entity_partitions(p_ahead integer DEFAULT 1)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_last bigint;
    v_name text;
BEGIN
    IF p_ahead IS NULL OR p_ahead < 1 OR p_ahead > 1000 THEN
        RAISE EXCEPTION 'ensure_entity_partitions: p_ahead must be between 1 and 1000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO v_last
    FROM public.entities_entity_id_seq s;
    FOR k IN 0..(v_last / 1000000) + p_ahead LOOP
        v_name := 'entities_p' || k;
        IF to_regclass('public.' || quote_ident(v_name)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE public.%I PARTITION OF public.entities FOR VALUES FROM (%s) TO (%s)',
                v_name, k * 1000000, (k + 1) * 1000000);
            RETURN NEXT v_name;
        END IF;
    END LOOP;
END
$$;

SELECT public.ensure_ts_partitions(now(), 2);
SELECT public.ensure_entity_partitions(1);
