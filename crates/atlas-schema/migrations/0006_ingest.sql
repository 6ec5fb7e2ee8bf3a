-- 0006: the ingest path's durable flush, and decimal rounding opt-in.
--
-- The server acknowledges a telemetry request only once its values are committed in
-- entity_values_ts. It COPYs a batch into staging and, in the same transaction, calls
-- stage_flush_own(), which moves exactly the rows this transaction inserted (xmin = the
-- current transaction id). Until commit those rows are invisible to every other session, so
-- no other flusher can take them, and after commit they are in the time series: commit is
-- the acknowledgement. Rows other producers COPY are drained by stage_flush (SKIP LOCKED).
-- Both share flush_moved, the validation/insert/projection steps of 0003's stage_flush.

-- Decimal attributes reject more than 5 fraction digits unless they opt into rounding.
ALTER TABLE public.attributes ADD COLUMN allow_rounding boolean NOT NULL DEFAULT FALSE;

-- Staging churns (every batch inserts and deletes); vacuum it by row count, not by a
-- fraction of its (tiny) size, so scans for a transaction's rows stay short.
ALTER TABLE public.entity_values_ingest SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0
);

-- Validates, stores and projects rows already removed from staging. Returns one summary row
-- per (tenant, entity) that stored values (dead_* NULL), and one row per dead-lettered value
-- (stored = 0, dead_* set). Runs with its caller's rights (the definer functions below).
CREATE FUNCTION public.flush_moved(p_rows public.entity_values_ingest[])
RETURNS TABLE (tenant_id bigint, entity_id bigint, stored integer, hot_changed boolean,
               dead_attribute_id bigint, dead_ingested_at timestamptz, dead_reason text)
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
    v_good   public.entity_values_ingest[];
    v_stored public.entity_values_ingest[];
    v_row    public.entity_values_ingest;
    v_hit    integer;
    v_t      bigint[];
    v_e      bigint[];
    v_v      jsonb[];
    v_a      jsonb[];
    v_ct     bigint[];
    v_ce     bigint[];
    v_dead   public.entity_values_dead_letter[];
    v_dl     public.entity_values_dead_letter;
BEGIN
    IF p_rows IS NULL OR cardinality(p_rows) = 0 THEN
        RETURN;
    END IF;

    -- Validate (see 0003): attribute, value column for its type, entity of the row's tenant.
    WITH r AS (
        SELECT * FROM unnest(p_rows)
    ), owned AS (
        SELECT x.tenant_id, x.entity_id
        FROM (SELECT DISTINCT r.tenant_id, r.entity_id FROM r) x
        WHERE EXISTS (
            SELECT 1 FROM public.entities e
            WHERE e.entity_id = x.entity_id AND e.tenant_id = x.tenant_id AND NOT e.is_deleted)
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
    ), dead AS (
        INSERT INTO public.entity_values_dead_letter (
            entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
            value_date, value_timestamp, ingested_at, staged_at, reason)
        SELECT c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal, c.value_bool,
               c.value_date, c.value_timestamp, c.ingested_at, c.staged_at, c.reason
        FROM classified c WHERE c.reason IS NOT NULL
        RETURNING *
    ), good AS (
        SELECT array_agg(ROW(c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal,
                             c.value_bool, c.value_date, c.value_timestamp, c.ingested_at, c.staged_at
                         )::public.entity_values_ingest
                         ORDER BY c.tenant_id, c.entity_id, c.attribute_id, c.ingested_at) AS rows
        FROM classified c WHERE c.reason IS NULL
    )
    SELECT good.rows, (SELECT array_agg(d) FROM dead d) INTO v_good, v_dead FROM good;

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
                    INSERT INTO public.entity_values_dead_letter (
                        entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                        value_date, value_timestamp, ingested_at, staged_at, reason)
                    VALUES (v_row.entity_id, v_row.tenant_id, v_row.attribute_id, v_row.value, v_row.value_int,
                            v_row.value_decimal, v_row.value_bool, v_row.value_date, v_row.value_timestamp,
                            v_row.ingested_at, v_row.staged_at, SQLERRM)
                    RETURNING * INTO v_dl;
                    v_dead := v_dead || v_dl;
                END;
            END LOOP;
        END;
    END IF;

    -- Project the newest stored value of each hot attribute, one delta per entity.
    IF v_stored IS NOT NULL THEN
        SELECT array_agg(d.tenant_id), array_agg(d.entity_id), array_agg(d.vals), array_agg(d.ats)
        INTO v_t, v_e, v_v, v_a
        FROM (
            SELECT n.tenant_id, n.entity_id,
                   jsonb_object_agg(n.attribute_name, n.v) AS vals,
                   jsonb_object_agg(n.attribute_name, n.t) AS ats
            FROM (
                SELECT DISTINCT ON (s.tenant_id, s.entity_id, s.attribute_id)
                       s.tenant_id, s.entity_id, a.attribute_name,
                       public.typed_value_jsonb(a.data_type, s.value, s.value_int, s.value_decimal, s.value_bool,
                                                s.value_date, s.value_timestamp) AS v,
                       to_jsonb((extract(epoch FROM s.ingested_at) * 1000000)::bigint) AS t
                FROM unnest(v_stored) s
                JOIN public.attributes a ON a.attribute_id = s.attribute_id AND a.is_hot
                ORDER BY s.tenant_id, s.entity_id, s.attribute_id, s.ingested_at DESC
            ) n
            GROUP BY n.tenant_id, n.entity_id
        ) d;
        IF v_t IS NOT NULL THEN
            SELECT array_agg(h.tenant_id), array_agg(h.entity_id) INTO v_ct, v_ce
            FROM public.hot_attrs_apply(v_t, v_e, v_v, v_a) h;
        END IF;

        RETURN QUERY
        SELECT c.tenant_id, c.entity_id, c.n, (x.e IS NOT NULL),
               NULL::bigint, NULL::timestamptz, NULL::text
        FROM (
            SELECT s.tenant_id, s.entity_id, count(*)::integer AS n FROM unnest(v_stored) s GROUP BY 1, 2
        ) c
        LEFT JOIN unnest(v_ct, v_ce) AS x (t, e) ON x.t = c.tenant_id AND x.e = c.entity_id;
    END IF;

    IF v_dead IS NOT NULL THEN
        RETURN QUERY
        SELECT d.tenant_id, d.entity_id, 0, FALSE, d.attribute_id, d.ingested_at, d.reason
        FROM unnest(v_dead) d;
    END IF;
END
$$;

-- Background drain (any producer's committed rows; safe with concurrent callers).
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
    FROM public.flush_moved(v_rows) f
    WHERE f.dead_reason IS NULL;
END
$$;

-- The durable path: moves exactly the rows the calling transaction inserted into staging.
CREATE FUNCTION public.stage_flush_own()
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

GRANT USAGE, CREATE ON SCHEMA public TO atlas_definer;
ALTER FUNCTION public.stage_flush_own() OWNER TO atlas_definer;
REVOKE CREATE ON SCHEMA public FROM atlas_definer;
REVOKE EXECUTE ON FUNCTION public.flush_moved(public.entity_values_ingest[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.stage_flush_own() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.flush_moved(public.entity_values_ingest[]) TO atlas_definer;
GRANT EXECUTE ON FUNCTION public.stage_flush_own() TO atlas_app;
-- Dead letters are reported back to the flushing caller.
GRANT SELECT ON public.entity_values_dead_letter TO atlas_definer;
