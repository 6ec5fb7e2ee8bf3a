-- 0010: what the maintainer needs — partitions premade monthly or daily, retention by
-- DETACH + DROP under a lock timeout, BRIN summaries of closed partitions, and a log of its
-- runs. Like 0002's functions these are SECURITY DEFINER owned by atlas_owner (DDL needs the
-- table's owner) and take no identifiers from the caller: names derive from dates.

-- What the maintainer did, for `atlas status` and operators (not tenant data: no RLS).
CREATE TABLE public.maintenance_runs (
    run_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task        text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    ok          boolean     NOT NULL,
    rows        bigint,
    detail      text
);
CREATE INDEX idx_maintenance_runs_task ON public.maintenance_runs (task, finished_at DESC);
GRANT SELECT, INSERT, DELETE ON public.maintenance_runs TO atlas_app;

-- Name and bounds of every entity_values_ts partition, read from the catalog: the one place
-- partition bounds are parsed. pg_get_expr prints the bounds in the session's time zone and
-- they are cast back in the same session, so the zone cannot skew them.
CREATE FUNCTION public.ts_partition_bounds()
RETURNS TABLE (relid oid, relname text, lo timestamptz, hi timestamptz)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid, c.relname::text,
           (regexp_match(b.expr, 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(b.expr, 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_catalog.pg_inherits i
    JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS b (expr)
    WHERE i.inhparent = 'public.entity_values_ts'::regclass
      AND b.expr LIKE 'FOR VALUES FROM%'
$$;

-- Extends entity_values_ts forward from its newest partition (or from p_until's month/day
-- when there is none) with monthly (p_daily false) or daily partitions until the newest
-- upper bound is at least p_until. Starting from the newest bound, a change of interval
-- never overlaps existing partitions. Bounds are UTC midnights. Returns the names created.
CREATE FUNCTION public.ensure_ts_partitions_until(p_until timestamptz, p_daily boolean)
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
    IF p_until IS NULL OR p_daily IS NULL OR p_until > now() + interval '20 years' THEN
        RAISE EXCEPTION 'ensure_ts_partitions_until: p_until must be within 20 years'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT max(p.hi) AT TIME ZONE 'UTC' INTO v_lo FROM public.ts_partition_bounds() p;
    IF v_lo IS NULL THEN
        v_lo := date_trunc(CASE WHEN p_daily THEN 'day' ELSE 'month' END, now() AT TIME ZONE 'UTC');
    END IF;
    WHILE v_lo < p_until AT TIME ZONE 'UTC' AND v_n < 5000 LOOP
        IF p_daily THEN
            v_hi := date_trunc('day', v_lo) + interval '1 day';
            v_name := 'entity_values_' || to_char(v_lo, 'YYYY_MM_DD');
        ELSE
            v_hi := date_trunc('month', v_lo) + interval '1 month';
            -- A month that starts mid-way (after daily partitions) is named by its start day.
            v_name := 'entity_values_' || CASE WHEN v_lo = date_trunc('month', v_lo)
                                               THEN to_char(v_lo, 'YYYY_MM')
                                               ELSE to_char(v_lo, 'YYYY_MM_DD') END;
        END IF;
        EXECUTE format(
            'CREATE TABLE public.%I PARTITION OF public.entity_values_ts FOR VALUES FROM (%L) TO (%L)',
            v_name, to_char(v_lo, 'YYYY-MM-DD HH24:MI:SS') || '+00', to_char(v_hi, 'YYYY-MM-DD HH24:MI:SS') || '+00');
        RETURN NEXT v_name;
        v_lo := v_hi;
        v_n := v_n + 1;
    END LOOP;
END
$$;

-- Retention: detaches and drops the oldest entity_values_ts partition whose upper bound is at
-- or before p_before, waiting at most p_lock_timeout_ms for its locks (DETACH takes an
-- ACCESS EXCLUSIVE lock on the parent; a timeout fails this call, not ingest, and the
-- maintainer tries again next round). Returns the dropped partition's name, or NULL when none
-- is old enough. One partition per call keeps each lock short.
CREATE FUNCTION public.drop_oldest_ts_partition_before(p_before timestamptz, p_lock_timeout_ms integer)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_name text;
BEGIN
    IF p_before IS NULL OR p_lock_timeout_ms IS NULL OR p_lock_timeout_ms < 1 OR p_lock_timeout_ms > 60000 THEN
        RAISE EXCEPTION 'drop_oldest_ts_partition_before: p_lock_timeout_ms must be between 1 and 60000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.relname INTO v_name
    FROM public.ts_partition_bounds() p
    WHERE p.hi <= p_before
    ORDER BY p.hi
    LIMIT 1;
    IF v_name IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    EXECUTE format('ALTER TABLE public.entity_values_ts DETACH PARTITION public.%I', v_name);
    EXECUTE format('DROP TABLE public.%I', v_name);
    RETURN v_name;
END
$$;

-- Summarizes the BRIN ranges of partitions that closed before p_now (their data no longer
-- changes; autosummarize may lag). Returns the number of ranges summarized.
CREATE FUNCTION public.summarize_closed_brin(p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_total bigint := 0;
    r record;
BEGIN
    FOR r IN
        SELECT ix.indexrelid
        FROM public.ts_partition_bounds() p
        JOIN pg_catalog.pg_index ix ON ix.indrelid = p.relid
        JOIN pg_catalog.pg_class ic ON ic.oid = ix.indexrelid
        JOIN pg_catalog.pg_am am ON am.oid = ic.relam AND am.amname = 'brin'
        WHERE p.hi <= p_now
    LOOP
        v_total := v_total + brin_summarize_new_values(r.indexrelid);
    END LOOP;
    RETURN v_total;
END
$$;

-- The primary's own view of each streaming replica, to cross-check the heartbeat lag: the
-- lag columns of pg_stat_replication are visible only with pg_read_all_stats, which the
-- migrator grants atlas_definer (never the app login).
CREATE FUNCTION public.replication_replay_lag()
RETURNS TABLE (application_name text, client_addr text, state text, replay_lag_s double precision, replay_lsn text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT r.application_name::text, r.client_addr::text, r.state::text,
           extract(epoch FROM r.replay_lag)::double precision, r.replay_lsn::text
    FROM pg_catalog.pg_stat_replication r
    ORDER BY r.application_name, r.client_addr::text
$$;
GRANT USAGE, CREATE ON SCHEMA public TO atlas_definer;
ALTER FUNCTION public.replication_replay_lag() OWNER TO atlas_definer;
REVOKE CREATE ON SCHEMA public FROM atlas_definer;

REVOKE EXECUTE ON FUNCTION
    public.ts_partition_bounds(),
    public.replication_replay_lag(),
    public.ensure_ts_partitions_until(timestamptz, boolean),
    public.drop_oldest_ts_partition_before(timestamptz, integer),
    public.summarize_closed_brin(timestamptz)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    public.ts_partition_bounds(),
    public.replication_replay_lag(),
    public.ensure_ts_partitions_until(timestamptz, boolean),
    public.drop_oldest_ts_partition_before(timestamptz, integer),
    public.summarize_closed_brin(timestamptz)
TO atlas_app;
