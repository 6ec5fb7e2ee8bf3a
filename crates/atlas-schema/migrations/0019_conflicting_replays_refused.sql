-- 0019: a replay with a different value is refused, not acknowledged.
--
-- One (entity, attribute, time) is one stored value, and the general flush path stores a
-- batch with ON CONFLICT DO NOTHING: a row meeting a stored one is a replay (a retried
-- request), acknowledged and not stored again. But a row with a *different* value at a
-- stored key was acknowledged the same way, and silently not stored. flush_moved (0012's,
-- otherwise unchanged) now compares every row it could not store with the row stored at its
-- key and dead-letters the different ones: the server answers 409 naming the value, other
-- producers find it in entity_values_dead_letter. JSON values compare as jsonb, decimals
-- numerically (21.50 = 21.5).

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
    v_dl     public.entity_values_dead_letter;
    v_conflicts public.entity_values_dead_letter[];
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

    -- Every row not stored met a stored one at its key: the same value is a replay, stored
    -- already; a different value was not stored, and is refused (dead-lettered) so that it is
    -- not acknowledged as if it were. Compared with the row stored now at each key, so the
    -- rows this call stored compare equal to themselves. ON CONFLICT waited for any
    -- concurrent inserter of a key to finish, so its row is visible to this new statement.
    IF v_good IS NOT NULL THEN
        WITH conflicting AS (
            SELECT g.*
            FROM unnest(v_good) g
            JOIN public.attributes a ON a.attribute_id = g.attribute_id
            JOIN public.entity_values_ts s
              ON s.tenant_id = g.tenant_id AND s.entity_id = g.entity_id
             AND s.attribute_id = g.attribute_id AND s.ingested_at = g.ingested_at
            WHERE (CASE WHEN a.data_type = 'json' THEN s.value::jsonb IS DISTINCT FROM g.value::jsonb
                        ELSE s.value IS DISTINCT FROM g.value END)
               OR s.value_int IS DISTINCT FROM g.value_int
               OR s.value_decimal IS DISTINCT FROM g.value_decimal
               OR s.value_bool IS DISTINCT FROM g.value_bool
               OR s.value_date IS DISTINCT FROM g.value_date
               OR s.value_timestamp IS DISTINCT FROM g.value_timestamp
        ), dead AS (
            INSERT INTO public.entity_values_dead_letter (
                entity_id, tenant_id, attribute_id, value, value_int, value_decimal, value_bool,
                value_date, value_timestamp, ingested_at, staged_at, reason)
            SELECT c.entity_id, c.tenant_id, c.attribute_id, c.value, c.value_int, c.value_decimal,
                   c.value_bool, c.value_date, c.value_timestamp, c.ingested_at, c.staged_at,
                   'a different value is already stored for this entity, attribute and time'
            FROM conflicting c
            RETURNING *
        )
        SELECT array_agg(d) INTO v_conflicts FROM dead d;
        IF v_conflicts IS NOT NULL THEN
            v_dead := coalesce(v_dead, '{}') || v_conflicts;
        END IF;
    END IF;

    -- Project the newest stored value of each hot attribute, one delta per entity.
    IF v_stored IS NOT NULL THEN
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
