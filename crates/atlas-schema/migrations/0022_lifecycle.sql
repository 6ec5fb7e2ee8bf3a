-- 0022: the data lifecycle per tenant - rollups of every attribute at 1 minute, 1 hour and
-- 1 day, the marks that keep them exact, and each tenant's retention and quotas.
--
-- Rollups. One row per (tenant, entity, attribute, bucket): how many values, and for values
-- that have a number - integers, decimals and booleans as 0/1 - their sum, min, max and the
-- first and last value with their times. Strings, dates, timestamps and json roll up as the
-- count and the first/last times only (their value columns stay NULL): `count` reads them over
-- years, the numeric functions refuse them as before. Rows are combinable (sums add, min of
-- mins, first of the earliest first_at), so a coarser bucket is computed from finer ones and a
-- request's bucket from any level whose width divides it.
--
-- Not partitioned by time: retention deletes a tenant's old rows in bounded batches (its
-- retention differs per tenant, so whole partitions could rarely go), and the rows are 60x
-- (1m) to 86 400x (1d) fewer than values read every second.
DO $$
DECLARE
    v_level text;
BEGIN
    FOREACH v_level IN ARRAY ARRAY['1m', '1h', '1d'] LOOP
        EXECUTE format($f$
            CREATE TABLE public.%1$I (
                tenant_id    bigint      NOT NULL,
                entity_id    bigint      NOT NULL,
                attribute_id bigint      NOT NULL,
                bucket       timestamptz NOT NULL,
                n            bigint      NOT NULL,
                sum          numeric,
                min          numeric,
                max          numeric,
                first_at     timestamptz NOT NULL,
                first_value  numeric,
                last_at      timestamptz NOT NULL,
                last_value   numeric,
                PRIMARY KEY (tenant_id, entity_id, attribute_id, bucket)
            );
            CREATE INDEX %2$I ON public.%1$I (tenant_id, attribute_id, bucket);
            ALTER TABLE public.%1$I ENABLE ROW LEVEL SECURITY;
            ALTER TABLE public.%1$I FORCE ROW LEVEL SECURITY;
            CREATE POLICY tenant_isolation ON public.%1$I FOR ALL TO PUBLIC
                USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
                WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);
            GRANT SELECT ON public.%1$I TO atlas_app;
            GRANT SELECT, INSERT, UPDATE, DELETE ON public.%1$I TO atlas_definer;
        $f$, 'rollup_' || v_level, 'idx_rollup_' || v_level || '_attr_bucket');
    END LOOP;
END
$$;

-- Dirty marks. A write marks (tenant, attribute, minute) of what it stored (level 1); the
-- maintainer claims settled marks, re-aggregates exactly those buckets and marks the next
-- level (2: hour, 3: day). A rollup row is current unless a mark of its bucket or of a finer
-- bucket inside it is open or claimed, and readers take such buckets from the finer level
-- (raw values, for minutes): a read always equals aggregating the raw values.
--
-- Writers insert marks with ON CONFLICT DO NOTHING, which takes no lock (concurrent writers
-- of one tenant and attribute never wait for each other). So the maintainer cannot simply
-- delete a mark and aggregate: a writer that found the mark already there may not have
-- committed yet. Claiming moves marks to rollup_claimed; sealing then waits for the writers
-- that marked before (they hold a shared advisory lock to their commit, see rollup_mark); a
-- sealed claim is aggregated, and a writer after the move inserts a new open mark.
CREATE TABLE public.rollup_dirty (
    tenant_id    bigint      NOT NULL,
    attribute_id bigint      NOT NULL,
    level        smallint    NOT NULL CHECK (level IN (1, 2, 3)),
    bucket       timestamptz NOT NULL,
    marked_at    timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (tenant_id, attribute_id, level, bucket)
);
CREATE TABLE public.rollup_claimed (
    tenant_id    bigint      NOT NULL,
    attribute_id bigint      NOT NULL,
    level        smallint    NOT NULL CHECK (level IN (1, 2, 3)),
    bucket       timestamptz NOT NULL,
    sealed       boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, attribute_id, level, bucket)
);
ALTER TABLE public.rollup_dirty ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rollup_dirty FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.rollup_dirty FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);
ALTER TABLE public.rollup_claimed ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rollup_claimed FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.rollup_claimed FOR ALL TO PUBLIC
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);
GRANT SELECT ON public.rollup_dirty, public.rollup_claimed TO atlas_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.rollup_dirty, public.rollup_claimed TO atlas_definer;

-- Each tenant's retention and quotas. NULL is "the global default" (from the server's
-- configuration), 0 is "none" (keep for ever / no limit). Tenant metadata like `tenants`
-- (read before any tenant context exists: the quota check of a write), so no row policy; the
-- app role reads it and the admin API (behind the admin token) writes it.
CREATE TABLE public.tenant_limits (
    tenant_id          bigint      PRIMARY KEY,
    raw_days           integer CHECK (raw_days >= 0),
    rollup_1m_days     integer CHECK (rollup_1m_days >= 0),
    rollup_1h_days     integer CHECK (rollup_1h_days >= 0),
    rollup_1d_days     integer CHECK (rollup_1d_days >= 0),
    dead_letter_days   integer CHECK (dead_letter_days >= 0),
    max_entities       bigint  CHECK (max_entities >= 0),
    max_values_per_day bigint  CHECK (max_values_per_day >= 0),
    max_stored_values  bigint  CHECK (max_stored_values >= 0),
    updated_at         timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
GRANT SELECT, INSERT, UPDATE ON public.tenant_limits TO atlas_app;
GRANT SELECT ON public.tenant_limits TO atlas_definer;

-- Retention deletes a tenant's expired values and dead letters in batches (retention_purge).
GRANT DELETE ON public.entity_values_ts TO atlas_definer;
GRANT DELETE ON public.entity_values_dead_letter TO atlas_definer;

-- On a Citus coordinator: rollups distributed like the values they summarize (co-located, so
-- re-aggregating a tenant's bucket stays on its node); marks, claims
-- and limits stay on the coordinator, where every write and the maintainer pass.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- No foreign keys to reference tables here: the default (parallel) mode distributes them,
    -- after this migration's grants on distributed tables ran in parallel already.
    PERFORM create_distributed_table('public.rollup_1m', 'tenant_id', colocate_with => 'public.api_keys');
    PERFORM create_distributed_table('public.rollup_1h', 'tenant_id', colocate_with => 'public.api_keys');
    PERFORM create_distributed_table('public.rollup_1d', 'tenant_id', colocate_with => 'public.api_keys');
END
$$;
