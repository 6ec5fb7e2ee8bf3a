-- Maintenance: partitions premade monthly or daily (forward and backward), retention by
-- DETACH + DROP under a lock timeout, BRIN summaries of closed partitions, replica lag.
GRANT CREATE ON SCHEMA public TO atlas_definer;
-- Partition management is done by Atlas itself (the seed uses pg_partman; Atlas runs on any
-- PostgreSQL 15 without extensions). These functions are SECURITY DEFINER owned by
-- atlas_owner so the server's maintainer, logged in as atlas_app, can premake partitions
-- without owning anything. They take no identifiers from the caller: names are derived from
-- dates and integers.
-- On a Citus coordinator a new partition of a distributed table is distributed at once; the
-- partition functions make its shards over one connection per worker (the block at the end of
-- this file): entities has a foreign key to a reference table, and parallel connections then
-- deadlock with each other.

-- Creates the monthly partitions of entity_values_ts covering the month of p_at and the
-- p_months_ahead months after it. Bounds are UTC midnights on the first of the month.
-- Returns the names it created (none when all exist).
CREATE OR REPLACE FUNCTION public.ensure_ts_partitions(p_at timestamptz DEFAULT now(), p_months_ahead integer DEFAULT 2)
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
REVOKE EXECUTE ON FUNCTION public.ensure_ts_partitions(timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ensure_ts_partitions(timestamp with time zone,integer) TO atlas_app;

-- Creates entities partitions (1 M ids each) from 0 up to p_ahead partitions beyond the one
-- holding the sequence's current value. Returns the names it created.
CREATE OR REPLACE FUNCTION public.ensure_entity_partitions(p_ahead integer DEFAULT 1)
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
REVOKE EXECUTE ON FUNCTION public.ensure_entity_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ensure_entity_partitions(integer) TO atlas_app;

-- Name and bounds of every entity_values_ts partition, read from the catalog: the one place
-- partition bounds are parsed. pg_get_expr prints the bounds in the session's time zone and
-- they are cast back in the same session, so the zone cannot skew them.
CREATE OR REPLACE FUNCTION public.ts_partition_bounds()
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
REVOKE EXECUTE ON FUNCTION public.ts_partition_bounds() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ts_partition_bounds() TO atlas_app;

-- Extends entity_values_ts forward from its newest partition (or from p_until's month/day
-- when there is none) with monthly (p_daily false) or daily partitions until the newest
-- upper bound is at least p_until. Starting from the newest bound, a change of interval
-- never overlaps existing partitions. Bounds are UTC midnights. Returns the names created.
CREATE OR REPLACE FUNCTION public.ensure_ts_partitions_until(p_until timestamptz, p_daily boolean)
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
REVOKE EXECUTE ON FUNCTION public.ensure_ts_partitions_until(timestamp with time zone,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ensure_ts_partitions_until(timestamp with time zone,boolean) TO atlas_app;

-- Retention: detaches and drops the oldest entity_values_ts partition whose upper bound is at
-- or before p_before, waiting at most p_lock_timeout_ms for its locks (DETACH takes an
-- ACCESS EXCLUSIVE lock on the parent; a timeout fails this call, not ingest, and the
-- maintainer tries again next round). Returns the dropped partition's name, or NULL when none
-- is old enough. One partition per call keeps each lock short.
CREATE OR REPLACE FUNCTION public.drop_oldest_ts_partition_before(p_before timestamptz, p_lock_timeout_ms integer)
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
REVOKE EXECUTE ON FUNCTION public.drop_oldest_ts_partition_before(timestamp with time zone,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.drop_oldest_ts_partition_before(timestamp with time zone,integer) TO atlas_app;

-- Summarizes the BRIN ranges of partitions that closed before p_now (their data no longer
-- changes; autosummarize may lag). Returns the number of ranges summarized.
CREATE OR REPLACE FUNCTION public.summarize_closed_brin(p_now timestamptz)
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
REVOKE EXECUTE ON FUNCTION public.summarize_closed_brin(timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.summarize_closed_brin(timestamp with time zone) TO atlas_app;

-- The primary's own view of each streaming replica, to cross-check the heartbeat lag: the
-- lag columns of pg_stat_replication are visible only with pg_read_all_stats, which the
-- migrator grants atlas_definer (never the app login).
CREATE OR REPLACE FUNCTION public.replication_replay_lag()
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
REVOKE EXECUTE ON FUNCTION public.replication_replay_lag() FROM PUBLIC;
ALTER FUNCTION public.replication_replay_lag() OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.replication_replay_lag() TO atlas_app;

-- Partitions for the past: a fleet's history imported with `atlas load`, and - on the first
-- hours of a month - a device's late readings from the day before. The maintainer uses it to
-- always cover the previous day, `atlas maintain backfill --since` for imports.

-- Extends entity_values_ts backward from its oldest partition (or from the current month or
-- day when there is none) with monthly (p_daily false) or daily partitions until the oldest
-- lower bound is at or before p_from. Ending at the oldest bound, new partitions never
-- overlap existing ones; a month cut short by that bound is named by its first day like any
-- month. Bounds are UTC midnights. Creates at most 100 per call - each holds locks until its
-- transaction ends, and a year of daily partitions in one would fill the lock table - so
-- callers repeat it until it returns fewer. Returns the names created, oldest last.
CREATE OR REPLACE FUNCTION public.ensure_ts_partitions_from(p_from timestamptz, p_daily boolean)
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
REVOKE EXECUTE ON FUNCTION public.ensure_ts_partitions_from(timestamp with time zone,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.ensure_ts_partitions_from(timestamp with time zone,boolean) TO atlas_app;

REVOKE CREATE ON SCHEMA public FROM atlas_definer;

-- On a Citus coordinator only: the partition functions make shards over one connection per
-- worker (see the top of this file). A function-level setting, so it ends with the call; set
-- here because a single node has no such parameter (and only a superuser may set an unknown one).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        ALTER FUNCTION public.ensure_ts_partitions(timestamptz, integer) SET citus.multi_shard_modify_mode = 'sequential';
        ALTER FUNCTION public.ensure_entity_partitions(integer) SET citus.multi_shard_modify_mode = 'sequential';
        ALTER FUNCTION public.ensure_ts_partitions_until(timestamptz, boolean) SET citus.multi_shard_modify_mode = 'sequential';
        ALTER FUNCTION public.ensure_ts_partitions_from(timestamptz, boolean) SET citus.multi_shard_modify_mode = 'sequential';
        ALTER FUNCTION public.drop_oldest_ts_partition_before(timestamptz, integer) SET citus.multi_shard_modify_mode = 'sequential';
    END IF;
END
$$;
