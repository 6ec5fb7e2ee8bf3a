-- Ingest: the durable flush the server calls (ingest_rows), the drain of staging (stage_flush)
-- and the general path both fall back to (flush_moved).
--
-- The definer functions are SECURITY DEFINER owned by atlas_definer, a NOLOGIN role with
-- BYPASSRLS and only the grants they need: they check and move rows of every tenant, which no
-- tenant-scoped policy could allow. Hardening, per the architecture: search_path pinned to
-- pg_catalog first (operators and functions cannot be shadowed), pg_temp last (a TEMP table
-- named like a real one cannot shadow it), every name schema-qualified, EXECUTE revoked from
-- PUBLIC. The seed's `SET LOCAL synchronous_commit = OFF` is deliberately absent:
-- acknowledgements are given after the flush commits, so the commit must be durable.
GRANT CREATE ON SCHEMA public TO atlas_definer;
-- The background drain of staging (rows of the staged HTTP mode and of any SQL producer):
-- takes up to p_limit rows (SKIP LOCKED, so drains run side by side) and hands them to
-- ingest_rows, whose fast path stores a clean, new batch with a plain INSERT in primary-key
-- order (measured, 50 000 staged values per call: 430-550 ms, against 680-810 ms through
-- flush_moved alone).
CREATE OR REPLACE FUNCTION public.stage_flush(p_limit integer DEFAULT 50000)
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
    v_rows public.entity_values_ingest[];
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'stage_flush: p_limit must be at least 1' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH moved AS (
        DELETE FROM public.entity_values_ingest s
        WHERE s.ctid = ANY (ARRAY(
            SELECT i.ctid FROM public.entity_values_ingest i LIMIT p_limit FOR UPDATE SKIP LOCKED))
        RETURNING s AS r
    )
    SELECT array_agg(moved.r) INTO v_rows FROM moved;
    RETURN QUERY
    SELECT f.tenant_id, f.entity_id, f.stored, f.hot_changed
    FROM public.ingest_rows(v_rows) f
    WHERE f.dead_reason IS NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION public.stage_flush(integer) FROM PUBLIC;
ALTER FUNCTION public.stage_flush(integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.stage_flush(integer) TO atlas_app;

-- Staging backlog for monitoring and drain loops, bounded so it stays cheap under a large
-- backlog: counts at most p_cap rows (a result equal to p_cap means "at least"), and the
-- oldest staged_at among them. The app role cannot read staging itself.
CREATE OR REPLACE FUNCTION public.staging_stats(p_cap integer DEFAULT 1000000, OUT backlog bigint, OUT oldest_staged_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT count(*), min(s.staged_at)
    FROM (SELECT i.staged_at FROM public.entity_values_ingest i LIMIT greatest(p_cap, 1)) s
$$;
REVOKE EXECUTE ON FUNCTION public.staging_stats(integer) FROM PUBLIC;
ALTER FUNCTION public.staging_stats(integer) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.staging_stats(integer) TO atlas_app;

-- The flush's questions to distributed tables take the batch as arrays of plain columns, and
-- name its tenants: on a Citus coordinator a query that reaches one shard is sent to that
-- worker whole, and an array of staging rows would name a type (the staging table's row)
-- that exists on the coordinator only; naming the tenants lets the coordinator ask only
-- their shards (a batch never waits for a worker holding none of them). Same plans on one node.

-- Which of the (tenant, entity) pairs are live entities.
CREATE OR REPLACE FUNCTION public.flush_live_entities(p_tenants bigint[], p_entities bigint[])
RETURNS TABLE (tenant_id bigint, entity_id bigint)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, public, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT e.tenant_id, e.entity_id
    FROM unnest(p_tenants, p_entities) AS x (tenant_id, entity_id)
    JOIN public.entities e ON e.entity_id = x.entity_id AND e.tenant_id = x.tenant_id
    WHERE NOT e.is_deleted AND e.tenant_id = ANY (p_tenants);
END
$$;
REVOKE EXECUTE ON FUNCTION public.flush_live_entities(bigint[],bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.flush_live_entities(bigint[],bigint[]) TO atlas_definer;

-- The values stored at the given keys.
CREATE OR REPLACE FUNCTION public.flush_stored_values(
    p_tenants bigint[], p_entities bigint[], p_attributes bigint[], p_times timestamptz[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, attribute_id bigint, ingested_at timestamptz,
               value text, value_int bigint, value_decimal numeric, value_bool boolean,
               value_date date, value_timestamp timestamptz)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, public, pg_temp
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT s.tenant_id, s.entity_id, s.attribute_id, s.ingested_at, s.value, s.value_int,
           s.value_decimal, s.value_bool, s.value_date, s.value_timestamp
    FROM unnest(p_tenants, p_entities, p_attributes, p_times) AS k (tenant_id, entity_id, attribute_id, at)
    JOIN public.entity_values_ts s
      ON s.tenant_id = k.tenant_id AND s.entity_id = k.entity_id
     AND s.attribute_id = k.attribute_id AND s.ingested_at = k.at
    WHERE s.tenant_id = ANY (p_tenants);
END
$$;
REVOKE EXECUTE ON FUNCTION public.flush_stored_values(bigint[],bigint[],bigint[],timestamp with time zone[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.flush_stored_values(bigint[],bigint[],bigint[],timestamp with time zone[]) TO atlas_definer;

-- Stores dead letters (rows built by the flush; their id and failed_at come from the
-- table's defaults). A no-op for NULL.
CREATE OR REPLACE FUNCTION public.dead_letter_store(p_dead public.entity_values_dead_letter[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF p_dead IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO public.entity_values_dead_letter (
        entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
        value_date, value_timestamp, ingested_at, staged_at, reason)
    SELECT d.entity_id, d.tenant_id, d.attribute_id, d.value, d.value_int, d.value_decimal, d.value_bool,
           d.value_date, d.value_timestamp, d.ingested_at, d.staged_at, d.reason
    FROM unnest(p_dead) d;
END
$$;
REVOKE EXECUTE ON FUNCTION public.dead_letter_store(entity_values_dead_letter[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.dead_letter_store(entity_values_dead_letter[]) TO atlas_definer;

-- The general flush path: validates every row (dead-lettering the bad ones with a reason),
-- stores the rest with ON CONFLICT DO NOTHING and projects the hot attributes. One (entity,
-- attribute, time) is one stored value: a row meeting a stored one is a replay (a retried
-- request), acknowledged and not stored again - but a row with a *different* value at a stored
-- key is compared with it and dead-lettered, so the server answers 409 naming the value and
-- other producers find it in entity_values_dead_letter. JSON values compare as jsonb,
-- decimals numerically (21.50 = 21.5).

CREATE OR REPLACE FUNCTION public.flush_moved(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean,
               dead_attribute_id bigint, dead_ingested_at timestamptz, dead_reason text)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_good   public.entity_values_ingest[];
    v_stored public.entity_values_ingest[];
    v_row    public.entity_values_ingest;
    v_hit    integer;
    v_dead   public.entity_values_dead_letter[];
    v_conflicts public.entity_values_dead_letter[];
    v_pt     bigint[];
    v_pe     bigint[];
    v_kt     bigint[];
    v_ke     bigint[];
    v_ka     bigint[];
    v_kat    timestamptz[];
BEGIN
    IF p_rows IS NULL OR cardinality(p_rows) = 0 THEN
        RETURN;
    END IF;
    SELECT array_agg(x.tenant_id), array_agg(x.entity_id) INTO v_pt, v_pe
    FROM (SELECT DISTINCT r.tenant_id, r.entity_id FROM unnest(p_rows) r) x;

    -- Each step is its own statement over arrays (no data-modifying CTE feeding a query):
    -- the form a Citus coordinator plans as well as a single node. Dead letters are built as
    -- typed rows here (their id and failed_at are left to the table's defaults).

    -- Validate: attribute, value column for its type, entity of the row's tenant.
    WITH r AS (
        SELECT * FROM unnest(p_rows)
    ), owned AS (
        SELECT * FROM public.flush_live_entities(v_pt, v_pe)
    ), classified AS (
        SELECT r.*,
               CASE
                   WHEN a.attribute_id IS NULL THEN 'unknown attribute_id'
                   WHEN NOT public.value_matches_type(a.data_type, r.value, r.value_int, r.value_decimal,
                                                      r.value_bool, r.value_date, r.value_timestamp)
                       THEN 'value does not match data_type ' || a.data_type
                           || ' (exactly one matching value column must be set)'
                   WHEN o.entity_id IS NULL THEN 'entity does not exist for this tenant'
               END AS reason
        FROM r
        LEFT JOIN public.attributes a ON a.attribute_id = r.attribute_id
        LEFT JOIN owned o ON o.tenant_id = r.tenant_id AND o.entity_id = r.entity_id
    )
    SELECT array_agg(ROW(c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal,
                         c.value_bool, c.value_date, c.value_timestamp, c.ingested_at, c.staged_at
                     )::public.entity_values_ingest
                     ORDER BY c.tenant_id, c.entity_id, c.attribute_id, c.ingested_at)
               FILTER (WHERE c.reason IS NULL),
           array_agg(ROW(NULL, c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal,
                         c.value_bool, c.value_date, c.value_timestamp, c.ingested_at, c.staged_at,
                         c.reason, NULL)::public.entity_values_dead_letter)
               FILTER (WHERE c.reason IS NOT NULL)
    INTO v_good, v_dead
    FROM classified c;
    PERFORM public.dead_letter_store(v_dead);

    -- Store in primary-key order; a failing set insert falls back to row by row.
    IF v_good IS NOT NULL THEN
        BEGIN
            WITH ins AS (
                INSERT INTO public.entity_values_ts (
                    entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                    value_date, value_timestamp, ingested_at)
                SELECT g.entity_id, g.tenant_id, g.attribute_id, g.value, g.value_int, g.value_decimal,
                       g.value_bool, g.value_date, g.value_timestamp, g.ingested_at
                FROM unnest(v_good) WITH ORDINALITY AS g
                ORDER BY g.ordinality
                ON CONFLICT DO NOTHING
                RETURNING entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                          value_date, value_timestamp, ingested_at
            )
            SELECT array_agg(ROW(ins.entity_id, ins.tenant_id, ins.attribute_id, ins.value, ins.value_int,
                                 ins.value_decimal, ins.value_bool, ins.value_date, ins.value_timestamp,
                                 ins.ingested_at, NULL)::public.entity_values_ingest)
            INTO v_stored FROM ins;
        EXCEPTION WHEN OTHERS THEN
            v_stored := NULL;
            FOREACH v_row IN ARRAY v_good LOOP
                BEGIN
                    INSERT INTO public.entity_values_ts (
                        entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                        value_date, value_timestamp, ingested_at)
                    VALUES (v_row.entity_id, v_row.tenant_id, v_row.attribute_id, v_row.value, v_row.value_int,
                            v_row.value_decimal, v_row.value_bool, v_row.value_date, v_row.value_timestamp,
                            v_row.ingested_at)
                    ON CONFLICT DO NOTHING
                    RETURNING 1 INTO v_hit;
                    IF FOUND THEN
                        v_stored := v_stored || v_row;
                    END IF;
                EXCEPTION WHEN OTHERS THEN
                    v_conflicts := ARRAY[ROW(NULL, v_row.entity_id, v_row.tenant_id, v_row.attribute_id,
                            v_row.value, v_row.value_int, v_row.value_decimal, v_row.value_bool, v_row.value_date,
                            v_row.value_timestamp, v_row.ingested_at, v_row.staged_at, SQLERRM, NULL
                        )::public.entity_values_dead_letter];
                    PERFORM public.dead_letter_store(v_conflicts);
                    v_dead := v_dead || v_conflicts;
                END;
            END LOOP;
        END;
    END IF;

    -- Every row not stored met a stored one at its key: the same value is a replay, stored
    -- already; a different value was not stored, and is refused (dead-lettered) so that it is
    -- not acknowledged as if it were. Compared with the row stored now at each key, so the
    -- rows this call stored compare equal to themselves. ON CONFLICT waited for any
    -- concurrent inserter of a key to finish, so its row is visible to this new statement.
    IF v_good IS NOT NULL THEN
        SELECT array_agg(g.tenant_id), array_agg(g.entity_id), array_agg(g.attribute_id), array_agg(g.ingested_at)
        INTO v_kt, v_ke, v_ka, v_kat
        FROM unnest(v_good) g;
        SELECT array_agg(ROW(NULL, g.entity_id, g.tenant_id, g.attribute_id, g.value, g.value_int,
                             g.value_decimal, g.value_bool, g.value_date, g.value_timestamp, g.ingested_at,
                             g.staged_at, 'a different value is already stored for this entity, attribute and time',
                             NULL)::public.entity_values_dead_letter)
        INTO v_conflicts
        FROM unnest(v_good) g
        JOIN public.attributes a ON a.attribute_id = g.attribute_id
        JOIN public.flush_stored_values(v_kt, v_ke, v_ka, v_kat) s
          ON s.tenant_id = g.tenant_id AND s.entity_id = g.entity_id
         AND s.attribute_id = g.attribute_id AND s.ingested_at = g.ingested_at
        WHERE (CASE WHEN a.data_type = 'json' THEN s.value::jsonb IS DISTINCT FROM g.value::jsonb
                    ELSE s.value IS DISTINCT FROM g.value END)
           OR s.value_int IS DISTINCT FROM g.value_int
           OR s.value_decimal IS DISTINCT FROM g.value_decimal
           OR s.value_bool IS DISTINCT FROM g.value_bool
           OR s.value_date IS DISTINCT FROM g.value_date
           OR s.value_timestamp IS DISTINCT FROM g.value_timestamp;
        IF v_conflicts IS NOT NULL THEN
            PERFORM public.dead_letter_store(v_conflicts);
            v_dead := coalesce(v_dead, '{}') || v_conflicts;
        END IF;
    END IF;

    -- Mark the stored values' rollup buckets; project the newest stored value of each hot
    -- attribute, one delta per entity.
    IF v_stored IS NOT NULL THEN
        PERFORM public.rollup_mark(v_stored);
        RETURN QUERY
        SELECT p.tenant_id, p.entity_id, p.stored, p.hot_changed, NULL::bigint, NULL::timestamptz, NULL::text
        FROM public.hot_attrs_project(v_stored) p;
    END IF;

    IF v_dead IS NOT NULL THEN
        RETURN QUERY
        SELECT d.tenant_id, d.entity_id, 0, FALSE, d.attribute_id, d.ingested_at, d.reason
        FROM unnest(v_dead) d;
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION public.flush_moved(entity_values_ingest[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.flush_moved(entity_values_ingest[]) TO atlas_definer;

-- The durable path: moves exactly the rows the calling transaction inserted into staging.
CREATE OR REPLACE FUNCTION public.stage_flush_own()
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
    WITH moved AS (
        DELETE FROM public.entity_values_ingest s
        WHERE s.xmin = xid(pg_current_xact_id())
        RETURNING s AS r
    )
    SELECT array_agg(moved.r) INTO v_rows FROM moved;
    RETURN QUERY SELECT * FROM public.flush_moved(v_rows);
END
$$;
REVOKE EXECUTE ON FUNCTION public.stage_flush_own() FROM PUBLIC;
ALTER FUNCTION public.stage_flush_own() OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.stage_flush_own() TO atlas_app;

-- The ten-column-array form servers of earlier releases call: they keep storing through the
-- same checks while a deployment migrates first and replaces its servers after, instead of
-- failing every durable write in between.
CREATE OR REPLACE FUNCTION public.ingest_rows(
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
BEGIN
    IF EXISTS (
        SELECT 1 FROM unnest(ARRAY[
            cardinality(p_tenant_id), cardinality(p_attribute_id), cardinality(p_value),
            cardinality(p_value_int), cardinality(p_value_decimal), cardinality(p_value_bool),
            cardinality(p_value_date), cardinality(p_value_timestamp), cardinality(p_ingested_at)]) c
        WHERE c IS DISTINCT FROM cardinality(p_entity_id))
    THEN
        RAISE EXCEPTION 'ingest_rows: the column arrays must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT * FROM public.ingest_rows(ARRAY(
        SELECT ROW(r.e, r.t, r.a, r.v, r.vi, r.vd, r.vb, r.vdt, r.vts, r.at, NULL)::public.entity_values_ingest
        FROM unnest(p_entity_id, p_tenant_id, p_attribute_id, p_value, p_value_int, p_value_decimal,
                    p_value_bool, p_value_date, p_value_timestamp, p_ingested_at)
             AS r (e, t, a, v, vi, vd, vb, vdt, vts, at)));
END
$$;
REVOKE EXECUTE ON FUNCTION public.ingest_rows(bigint[],bigint[],bigint[],text[],bigint[],numeric[],boolean[],date[],timestamp with time zone[],timestamp with time zone[]) FROM PUBLIC;
ALTER FUNCTION public.ingest_rows(bigint[],bigint[],bigint[],text[],bigint[],numeric[],boolean[],date[],timestamp with time zone[],timestamp with time zone[]) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.ingest_rows(bigint[],bigint[],bigint[],text[],bigint[],numeric[],boolean[],date[],timestamp with time zone[],timestamp with time zone[]) TO atlas_app;

-- The durable flush: the server's batch, one array of staging rows, validated, stored and
-- projected in the caller's transaction, whose commit is the acknowledgement. One composite
-- array instead of ten column arrays: unnesting ten arrays fills ten tuplestores on every pass
-- (~3 ms per 5 000 values, four passes), one array a single one (measured 75 -> 65 ms for a
-- batch). The common batch - all valid, all new, newer than the projection - is checked with
-- two aggregate queries and stored with a plain INSERT in primary-key order; anything else (an
-- invalid row, a replayed or duplicated key, a value outside the partitions) rolls the plain
-- INSERT's subtransaction back and takes flush_moved: the same dead letters, only slower.
CREATE OR REPLACE FUNCTION public.ingest_rows(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean,
               dead_attribute_id bigint, dead_ingested_at timestamptz, dead_reason text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
-- Plan each call for the batch at hand (see flush_moved below).
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_n    integer := coalesce(cardinality(p_rows), 0);
    v_fast boolean;
    v_pt   bigint[];
    v_pe   bigint[];
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF array_position(p_rows, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'ingest_rows: the batch holds a NULL row'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. Is every row valid? (the same rules as flush_moved's classification)
    SELECT bool_and(a.attribute_id IS NOT NULL AND r.ingested_at IS NOT NULL
                    AND public.value_matches_type(a.data_type, r.value, r.value_int, r.value_decimal,
                                                  r.value_bool, r.value_date, r.value_timestamp))
    INTO v_fast
    FROM unnest(p_rows) r
    LEFT JOIN public.attributes a ON a.attribute_id = r.attribute_id;
    IF v_fast THEN
        SELECT array_agg(x.tenant_id), array_agg(x.entity_id) INTO v_pt, v_pe
        FROM (SELECT DISTINCT r.tenant_id, r.entity_id FROM unnest(p_rows) r) x;
        SELECT count(*) = cardinality(v_pt) INTO v_fast
        FROM public.flush_live_entities(v_pt, v_pe);
    END IF;

    -- 2. Store them with a plain INSERT in primary-key order (concurrent writers take keys in
    -- one order, so they cannot deadlock). Any error - above all a key already stored or twice
    -- in the batch - rolls back just this block and the batch takes the general path.
    IF v_fast THEN
        BEGIN
            INSERT INTO public.entity_values_ts (
                entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                value_date, value_timestamp, ingested_at)
            SELECT r.entity_id, r.tenant_id, r.attribute_id, r.value, r.value_int, r.value_decimal,
                   r.value_bool, r.value_date, r.value_timestamp, r.ingested_at
            FROM unnest(p_rows) r
            ORDER BY r.tenant_id, r.entity_id, r.attribute_id, r.ingested_at;
        EXCEPTION WHEN OTHERS THEN
            v_fast := FALSE;
        END;
    END IF;

    IF NOT v_fast THEN
        RETURN QUERY
        SELECT * FROM public.flush_moved(ARRAY(
            SELECT ROW(r.entity_id, r.tenant_id, r.attribute_id, r.value, r.value_int, r.value_decimal,
                       r.value_bool, r.value_date, r.value_timestamp, r.ingested_at,
                       coalesce(r.staged_at, now()))::public.entity_values_ingest
            FROM unnest(p_rows) r));
        RETURN;
    END IF;

    -- 3. Every row is stored: mark their rollup buckets and project them.
    PERFORM public.rollup_mark(p_rows);
    RETURN QUERY
    SELECT p.tenant_id, p.entity_id, p.stored, p.hot_changed, NULL::bigint, NULL::timestamptz, NULL::text
    FROM public.hot_attrs_project(p_rows) p;
END
$$;
REVOKE EXECUTE ON FUNCTION public.ingest_rows(entity_values_ingest[]) FROM PUBLIC;
ALTER FUNCTION public.ingest_rows(entity_values_ingest[]) OWNER TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.ingest_rows(entity_values_ingest[]) TO atlas_app;

REVOKE CREATE ON SCHEMA public FROM atlas_definer;
