-- The data lifecycle: the rollup marks every write leaves and the maintainer's
-- claim-and-aggregate of them, retention's bounded deletes, and the usage quotas are checked
-- against. Tables, policies and the design are in migration 0022. Rollup levels: 1 = minute,
-- 2 = hour, 3 = day; all times UTC.
GRANT CREATE ON SCHEMA public TO atlas_definer;

-- A level's bucket width.
CREATE OR REPLACE FUNCTION public.rollup_width(p_level smallint)
RETURNS interval
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE p_level WHEN 1 THEN interval '1 minute' WHEN 2 THEN interval '1 hour' ELSE interval '1 day' END
$$;
REVOKE EXECUTE ON FUNCTION public.rollup_width(smallint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.rollup_width(smallint) TO atlas_definer, atlas_app;

-- Marks the minutes of stored rows dirty: one mark per (tenant, attribute, minute), however
-- many values a batch holds there. Called by the flush in the write's transaction, so a
-- committed value always has its mark (or an already-current rollup). ON CONFLICT DO NOTHING
-- takes no row lock: writers of one minute never wait for each other. The shared advisory
-- lock, held to the writer's commit, is what rollup_seal waits for (writers share it: they
-- never wait for each other either).
-- `atlas.rollups = off` (a database or session setting) skips the marks; only `atlas bench
-- ingest` sets it, in its own baseline database, to measure what rollups cost.
CREATE OR REPLACE FUNCTION public.rollup_mark(p_rows public.entity_values_ingest[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
    IF p_rows IS NULL OR current_setting('atlas.rollups', true) = 'off' THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(hashtext('atlas.rollup_marks'), 0);
    INSERT INTO public.rollup_dirty (tenant_id, attribute_id, level, bucket)
    SELECT DISTINCT r.tenant_id, r.attribute_id, 1::smallint, date_trunc('minute', r.ingested_at)
    FROM unnest(p_rows) r
    ORDER BY 1, 2, 3, 4
    ON CONFLICT DO NOTHING;
END
$$;
REVOKE EXECUTE ON FUNCTION public.rollup_mark(entity_values_ingest[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.rollup_mark(entity_values_ingest[]) TO atlas_definer;

-- Claims up to p_limit open marks whose bucket ended at or before p_settled (the current
-- minute keeps receiving values: it is aggregated once, after it closes; readers take it from
-- raw values meanwhile), finest level first: moves them to rollup_claimed, unsealed
-- (rollup_seal seals them, in a transaction of its own). Returns how many it claimed.
CREATE OR REPLACE FUNCTION public.rollup_claim(p_settled timestamptz, p_limit integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    v_n integer;
BEGIN
    WITH d AS (
        DELETE FROM public.rollup_dirty d
        WHERE (d.tenant_id, d.attribute_id, d.level, d.bucket) IN (
            SELECT x.tenant_id, x.attribute_id, x.level, x.bucket
            FROM public.rollup_dirty x
            WHERE x.bucket + public.rollup_width(x.level) <= p_settled
            ORDER BY x.level, x.bucket
            LIMIT greatest(p_limit, 1)
            FOR UPDATE SKIP LOCKED)
        RETURNING d.tenant_id, d.attribute_id, d.level, d.bucket
    )
    -- A bucket claimed already (not aggregated yet) takes the new writers too: its seal is
    -- broken, and the next seal waits for them as well.
    INSERT INTO public.rollup_claimed (tenant_id, attribute_id, level, bucket)
    SELECT d.tenant_id, d.attribute_id, d.level, d.bucket FROM d
    ON CONFLICT (tenant_id, attribute_id, level, bucket) DO UPDATE SET sealed = false;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
REVOKE EXECUTE ON FUNCTION public.rollup_claim(timestamptz, integer) FROM PUBLIC;
ALTER FUNCTION public.rollup_claim(timestamptz, integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.rollup_claim(timestamptz, integer) TO atlas_app;

-- Seals the claims made so far: takes the marks' advisory lock exclusively, which waits for
-- every writer that marked before - and so for every writer that found one of the claimed
-- marks and relied on it - to commit or roll back. Only writers, in this database, are waited
-- for (not every old transaction of the cluster, as an xid horizon would). Writers that come
-- meanwhile queue behind the request, so it gives up after p_wait_ms (lock_not_available)
-- and is tried again: ingest pauses at most that long. Call it in a transaction of its own,
-- after rollup_claim committed. Returns the claims sealed.
CREATE OR REPLACE FUNCTION public.rollup_seal(p_wait_ms integer DEFAULT 200)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_n integer;
BEGIN
    PERFORM set_config('lock_timeout', greatest(coalesce(p_wait_ms, 200), 1)::text || 'ms', true);
    PERFORM pg_advisory_xact_lock(hashtext('atlas.rollup_marks'), 0);
    UPDATE public.rollup_claimed c SET sealed = true WHERE NOT c.sealed;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
REVOKE EXECUTE ON FUNCTION public.rollup_seal(integer) FROM PUBLIC;
ALTER FUNCTION public.rollup_seal(integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.rollup_seal(integer) TO atlas_app;

-- Aggregates up to p_limit sealed claims of one level (their writers have all ended),
-- replaces their rollup rows, marks the next level, and deletes the claims - one
-- transaction, so a reader sees the old rows with the claim (and reads finer data) or the new
-- rows without it.
-- Returns the claims done (0: none ready at this level).
-- Nested loops only: each claim is one index range of its (tenant, attribute, bucket); a hash
-- join of the claims with every value of the tenant's attribute (what the planner picks for
-- a few thousand claims) compared each value with every claim (measured: > 50 s for 5 000
-- claims over 2.3 M values, against well under a second).
CREATE OR REPLACE FUNCTION public.rollup_apply(p_level smallint, p_limit integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
SET plan_cache_mode = force_custom_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
#variable_conflict use_column
DECLARE
    v_t bigint[];
    v_a bigint[];
    v_b timestamptz[];
    v_tenants bigint[];
BEGIN
    SELECT array_agg(c.tenant_id), array_agg(c.attribute_id), array_agg(c.bucket)
    INTO v_t, v_a, v_b
    FROM (SELECT c.tenant_id, c.attribute_id, c.bucket
          FROM public.rollup_claimed c
          WHERE c.level = p_level AND c.sealed
          ORDER BY c.tenant_id, c.attribute_id, c.bucket
          LIMIT greatest(p_limit, 1)
          FOR UPDATE) c;
    IF v_t IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(DISTINCT t) INTO v_tenants FROM unnest(v_t) t;

    -- First and last values: the least and greatest [epoch, value] pair (times are unique per
    -- entity and attribute, so the epoch decides), not an ordered array_agg, which sorts every
    -- group's input (measured: 252 -> 149 ms for the minutes of 200 000 values).
    IF p_level = 1 THEN
        -- Minutes from raw values. Every value of the bucket is read (the claim covers the
        -- tenant's attribute in that minute for all entities), so the row is the whole minute.
        INSERT INTO public.rollup_1m AS r (tenant_id, entity_id, attribute_id, bucket, n, sum, min, max,
                                           first_at, first_value, last_at, last_value)
        SELECT ev.tenant_id, ev.entity_id, ev.attribute_id, k.b, count(*),
               sum(v.x), min(v.x), max(v.x),
               min(ev.ingested_at), (min(ARRAY[extract(epoch FROM ev.ingested_at), v.x]))[2],
               max(ev.ingested_at), (max(ARRAY[extract(epoch FROM ev.ingested_at), v.x]))[2]
        FROM unnest(v_t, v_a, v_b) AS k (t, a, b)
        JOIN public.entity_values_ts ev
          ON ev.tenant_id = k.t AND ev.attribute_id = k.a
         AND ev.ingested_at >= k.b AND ev.ingested_at < k.b + interval '1 minute'
        CROSS JOIN LATERAL (SELECT coalesce(ev.value_int::numeric, ev.value_decimal,
                                            ev.value_bool::integer::numeric) AS x) v
        WHERE ev.tenant_id = ANY (v_tenants)
        GROUP BY ev.tenant_id, ev.entity_id, ev.attribute_id, k.b
        ON CONFLICT (tenant_id, entity_id, attribute_id, bucket) DO UPDATE
        SET n = excluded.n, sum = excluded.sum, min = excluded.min, max = excluded.max,
            first_at = excluded.first_at, first_value = excluded.first_value,
            last_at = excluded.last_at, last_value = excluded.last_value;
    ELSE
        -- Hours from minutes, days from hours: one statement, its two tables named by the
        -- level (fixed names, never input), the claims' keys as parameters.
        EXECUTE format(
            'INSERT INTO public.%I (tenant_id, entity_id, attribute_id, bucket, n, sum, min, max,
                                    first_at, first_value, last_at, last_value)
             SELECT f.tenant_id, f.entity_id, f.attribute_id, k.b, sum(f.n),
                    sum(f.sum), min(f.min), max(f.max),
                    min(f.first_at), (min(ARRAY[extract(epoch FROM f.first_at), f.first_value]))[2],
                    max(f.last_at), (max(ARRAY[extract(epoch FROM f.last_at), f.last_value]))[2]
             FROM unnest($1, $2, $3) AS k (t, a, b)
             JOIN public.%I f
               ON f.tenant_id = k.t AND f.attribute_id = k.a
              AND f.bucket >= k.b AND f.bucket < k.b + $5
             WHERE f.tenant_id = ANY ($4)
             GROUP BY f.tenant_id, f.entity_id, f.attribute_id, k.b
             ON CONFLICT (tenant_id, entity_id, attribute_id, bucket) DO UPDATE
             SET n = excluded.n, sum = excluded.sum, min = excluded.min, max = excluded.max,
                 first_at = excluded.first_at, first_value = excluded.first_value,
                 last_at = excluded.last_at, last_value = excluded.last_value',
            CASE p_level WHEN 2 THEN 'rollup_1h' ELSE 'rollup_1d' END,
            CASE p_level WHEN 2 THEN 'rollup_1m' ELSE 'rollup_1h' END)
        USING v_t, v_a, v_b, v_tenants, public.rollup_width(p_level);
    END IF;

    IF p_level < 3 THEN
        INSERT INTO public.rollup_dirty (tenant_id, attribute_id, level, bucket)
        SELECT DISTINCT k.t, k.a, (p_level + 1)::smallint,
               CASE WHEN p_level = 1 THEN date_trunc('hour', k.b) ELSE date_trunc('day', k.b) END
        FROM unnest(v_t, v_a, v_b) AS k (t, a, b)
        ORDER BY 1, 2, 3, 4
        ON CONFLICT DO NOTHING;
    END IF;

    DELETE FROM public.rollup_claimed c
    USING unnest(v_t, v_a, v_b) AS k (t, a, b)
    WHERE c.tenant_id = k.t AND c.attribute_id = k.a AND c.level = p_level AND c.bucket = k.b;
    RETURN cardinality(v_t);
END
$$;
REVOKE EXECUTE ON FUNCTION public.rollup_apply(smallint, integer) FROM PUBLIC;
ALTER FUNCTION public.rollup_apply(smallint, integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.rollup_apply(smallint, integer) TO atlas_app;

-- Open and claimed marks, per level, for `atlas status` and the backlog gauge.
CREATE OR REPLACE FUNCTION public.rollup_backlog(OUT level smallint, OUT open bigint, OUT claimed bigint,
                                                 OUT oldest timestamptz)
RETURNS SETOF record
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT l.level,
           (SELECT count(*) FROM public.rollup_dirty d WHERE d.level = l.level),
           (SELECT count(*) FROM public.rollup_claimed c WHERE c.level = l.level),
           (SELECT min(d.bucket) FROM public.rollup_dirty d WHERE d.level = l.level)
    FROM (VALUES (1::smallint), (2::smallint), (3::smallint)) l (level)
$$;
REVOKE EXECUTE ON FUNCTION public.rollup_backlog() FROM PUBLIC;
ALTER FUNCTION public.rollup_backlog() OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.rollup_backlog() TO atlas_app;

-- Retention: deletes up to p_limit of one tenant's rows older than p_before from one family
-- (0 raw values, 1/2/3 rollups by level, 4 dead letters). Bounded batches in their own
-- transactions: row locks on old rows only, so ingest never waits. Returns rows deleted
-- (fewer than p_limit: done). The raw delete goes through the tenant's (tenant, attribute,
-- time) index; rollups survive their values.
CREATE OR REPLACE FUNCTION public.retention_purge(p_tenant_id bigint, p_kind smallint,
                                                  p_before timestamptz, p_limit integer)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_n bigint;
BEGIN
    IF p_tenant_id IS NULL OR p_before IS NULL OR p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'retention_purge: tenant, time and a positive limit are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_kind = 0 THEN
        DELETE FROM public.entity_values_ts e
        USING (SELECT x.entity_id, x.attribute_id, x.ingested_at FROM public.entity_values_ts x
               WHERE x.tenant_id = p_tenant_id AND x.ingested_at < p_before LIMIT p_limit) d
        WHERE e.tenant_id = p_tenant_id AND e.entity_id = d.entity_id
          AND e.attribute_id = d.attribute_id AND e.ingested_at = d.ingested_at
          AND e.ingested_at < p_before;
    ELSIF p_kind IN (1, 2, 3) THEN
        -- A rollup level: its table named by the kind (fixed names, never input).
        EXECUTE format(
            'DELETE FROM public.%1$I r
             USING (SELECT x.entity_id, x.attribute_id, x.bucket FROM public.%1$I x
                    WHERE x.tenant_id = $1 AND x.bucket < $2 LIMIT $3) d
             WHERE r.tenant_id = $1 AND r.entity_id = d.entity_id
               AND r.attribute_id = d.attribute_id AND r.bucket = d.bucket',
            (ARRAY['rollup_1m', 'rollup_1h', 'rollup_1d'])[p_kind])
        USING p_tenant_id, p_before, p_limit;
    ELSIF p_kind = 4 THEN
        DELETE FROM public.entity_values_dead_letter l
        USING (SELECT x.dead_letter_id FROM public.entity_values_dead_letter x
               WHERE x.tenant_id = p_tenant_id AND x.failed_at < p_before LIMIT p_limit) d
        WHERE l.tenant_id = p_tenant_id AND l.dead_letter_id = d.dead_letter_id;
    ELSE
        RAISE EXCEPTION 'retention_purge: unknown kind %', p_kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
REVOKE EXECUTE ON FUNCTION public.retention_purge(bigint, smallint, timestamptz, integer) FROM PUBLIC;
ALTER FUNCTION public.retention_purge(bigint, smallint, timestamptz, integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.retention_purge(bigint, smallint, timestamptz, integer) TO atlas_app;

-- Values each tenant has stored, from the statistics view (as of its last refresh): the
-- stored-values quota's usage.
CREATE OR REPLACE FUNCTION public.tenant_stored_values()
RETURNS TABLE (tenant_id bigint, stored bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT s.tenant_id, sum(s.total_values)::bigint FROM public.mv_entity_attribute_stats s GROUP BY s.tenant_id
$$;
REVOKE EXECUTE ON FUNCTION public.tenant_stored_values() FROM PUBLIC;
ALTER FUNCTION public.tenant_stored_values() OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.tenant_stored_values() TO atlas_app;

-- Live entities of each tenant that has any: the entity quota's usage, for metrics and
-- `atlas status` (the quota check itself counts in the tenant's own transaction).
CREATE OR REPLACE FUNCTION public.tenant_entity_counts()
RETURNS TABLE (tenant_id bigint, entities bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT e.tenant_id, count(*) FROM public.entities e WHERE NOT e.is_deleted GROUP BY e.tenant_id
$$;
REVOKE EXECUTE ON FUNCTION public.tenant_entity_counts() FROM PUBLIC;
ALTER FUNCTION public.tenant_entity_counts() OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.tenant_entity_counts() TO atlas_app;

REVOKE CREATE ON SCHEMA public FROM atlas_definer;
