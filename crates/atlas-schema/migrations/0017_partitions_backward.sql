-- 0017: partitions for the past. Until now entity_values_ts only grew forward from the month
-- a database was created in, so a new installation refused every older reading: a fleet's
-- history imported with `atlas load`, and - on the first hours of a month - a device's late
-- readings from the day before. This extends the time series backward from its oldest
-- partition; the maintainer uses it to always cover the previous day, `atlas maintain
-- backfill --since` for imports.

-- Extends entity_values_ts backward from its oldest partition (or from the current month or
-- day when there is none) with monthly (p_daily false) or daily partitions until the oldest
-- lower bound is at or before p_from. Ending at the oldest bound, new partitions never
-- overlap existing ones; a month cut short by that bound is named by its first day like any
-- month. Bounds are UTC midnights. Creates at most 100 per call - each holds locks until its
-- transaction ends, and a year of daily partitions in one would fill the lock table - so
-- callers repeat it until it returns fewer. Returns the names created, oldest last.
CREATE FUNCTION public.ensure_ts_partitions_from(p_from timestamptz, p_daily boolean)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_lo   timestamp;
    v_hi   timestamp;
    v_name text;
    v_n    integer := 0;
BEGIN
    IF p_from IS NULL OR p_daily IS NULL OR p_from < now() - interval '20 years' THEN
        RAISE EXCEPTION 'ensure_ts_partitions_from: p_from must be within the last 20 years'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT min(p.lo) AT TIME ZONE 'UTC' INTO v_hi FROM public.ts_partition_bounds() p;
    IF v_hi IS NULL THEN
        v_hi := date_trunc(CASE WHEN p_daily THEN 'day' ELSE 'month' END, now() AT TIME ZONE 'UTC');
    END IF;
    WHILE v_hi > p_from AT TIME ZONE 'UTC' AND v_n < 100 LOOP
        -- The interval that ends at v_hi: the day or month holding the instant before it.
        v_lo := date_trunc(CASE WHEN p_daily THEN 'day' ELSE 'month' END, v_hi - interval '1 microsecond');
        v_name := 'entity_values_' || to_char(v_lo, CASE WHEN p_daily THEN 'YYYY_MM_DD' ELSE 'YYYY_MM' END);
        EXECUTE format(
            'CREATE TABLE public.%I PARTITION OF public.entity_values_ts FOR VALUES FROM (%L) TO (%L)',
            v_name, to_char(v_lo, 'YYYY-MM-DD HH24:MI:SS') || '+00', to_char(v_hi, 'YYYY-MM-DD HH24:MI:SS') || '+00');
        RETURN NEXT v_name;
        v_hi := v_lo;
        v_n := v_n + 1;
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION public.ensure_ts_partitions_from(timestamptz, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ensure_ts_partitions_from(timestamptz, boolean) TO atlas_app;
