-- 0021: on a Citus coordinator, the distributed schema; on a single node, nothing.
--
-- One migration history serves both: the baseline makes the same tables everywhere, and this
-- file distributes them when the citus extension is in the database (`atlas stack up --citus`
-- creates it and registers the workers before `atlas migrate`). Later migrations' DDL on these
-- tables is propagated to the shards by Citus itself.
--
-- What goes where, and why:
--   reference (a copy on every node): tenants, attributes - small global lookups every
--     tenant's rows join with (the attribute's type, the tenant's existence).
--   distributed by tenant_id, co-located (a tenant's rows of every table on one shard group,
--     so its joins and the flush's statements stay on one node): api_keys, entities,
--     entity_values_ts (monthly partitions kept: Citus distributes each), entity_jsonb,
--     entity_values_dead_letter. Every primary key and unique index holds tenant_id.
--   local to the coordinator: the staging queue entity_values_ingest (every write enters
--     through the coordinator and the flush moves it on in the same transaction; stage_flush's
--     SKIP LOCKED and stage_flush_own's xmin test need one table on one node), the stats
--     materialized view (REFRESH runs the aggregate on the shards; the result is small, one
--     row per tenant and attribute), replication_heartbeat, maintenance_runs and the
--     migration history (cluster bookkeeping, not tenant data).
--
-- entity_jsonb loses its 100 hash partitions here: the shards already split it (by tenant),
-- and 100 partitions per shard made 1 600 shard tables for 16 shards, 4.3 s to distribute
-- (against 0.05 s) and a search of one tenant probe 100 GIN indexes instead of one (see
-- BENCHMARKS.md, "Citus"). The entity-id RANGE partitions of entities stay (a handful, made
-- ahead by ensure_entity_partitions; each is distributed as it is created).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node WHERE groupid <> 0 AND noderole = 'primary') THEN
        RAISE EXCEPTION 'citus is installed in this database but no worker is registered'
            USING HINT = 'register the workers first (SELECT citus_add_node(host, port) on the coordinator, '
                         'or atlas stack up --citus), then run atlas migrate again';
    END IF;
    -- Distributing tables that reference a reference table must use one connection per node.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

    -- entity_jsonb without hash partitions (an empty table in a new database).
    ALTER PUBLICATION eav_cdc DROP TABLE public.entity_jsonb;
    DROP TABLE public.entity_jsonb;
    CREATE TABLE public.entity_jsonb (
        entity_id        bigint      NOT NULL,
        tenant_id        bigint      NOT NULL,
        hot_attrs        jsonb       NOT NULL DEFAULT '{}',
        hot_attrs_at     jsonb       NOT NULL DEFAULT '{}',
        cold_attrs       jsonb                DEFAULT '{}',
        updated_at       timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
        hot_attrs_newest bigint,
        PRIMARY KEY (entity_id, tenant_id)
    ) WITH (fillfactor = 50);
    CREATE INDEX idx_entity_jsonb_hot_attrs ON public.entity_jsonb USING gin (hot_attrs);
    CREATE INDEX idx_entity_jsonb_tenant ON public.entity_jsonb (tenant_id);
    ALTER TABLE public.entity_jsonb ENABLE ROW LEVEL SECURITY;
    ALTER TABLE public.entity_jsonb FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON public.entity_jsonb FOR ALL TO PUBLIC
        USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)
        WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint);
    GRANT SELECT, INSERT, UPDATE ON public.entity_jsonb TO atlas_definer;
    GRANT SELECT, INSERT, UPDATE ON public.entity_jsonb TO atlas_app;
    COMMENT ON COLUMN public.entity_jsonb.hot_attrs_newest IS
        'At least the newest event time (epoch microseconds) in hot_attrs_at, or NULL when unknown; internal to the projection (migration 0018)';
    ALTER PUBLICATION eav_cdc ADD TABLE
        public.entity_jsonb (entity_id, tenant_id, hot_attrs, hot_attrs_at, cold_attrs, updated_at);

    -- Keys that hold tenant_id. A key's prefix stays unique in practice (72 random bits) and the
    -- server compares the whole key's hash anyway; the lookup by prefix asks every shard.
    ALTER TABLE public.api_keys DROP CONSTRAINT api_keys_tenant_id_fkey;
    ALTER TABLE public.api_keys DROP CONSTRAINT api_keys_pkey;
    ALTER TABLE public.api_keys ADD PRIMARY KEY (tenant_id, key_id);
    DROP INDEX public.idx_api_keys_prefix;
    CREATE UNIQUE INDEX idx_api_keys_prefix ON public.api_keys (prefix, tenant_id);
    ALTER TABLE public.entity_values_dead_letter DROP CONSTRAINT entity_values_dead_letter_pkey;
    ALTER TABLE public.entity_values_dead_letter ADD PRIMARY KEY (tenant_id, dead_letter_id);

    -- api_keys first: once tenants is a reference table, a table with a foreign key to it is
    -- turned into a Citus local table, which Citus cannot distribute with an identity column.
    PERFORM create_distributed_table('public.api_keys', 'tenant_id', shard_count => 16,
                                     colocate_with => 'none');
    PERFORM create_reference_table('public.tenants');
    PERFORM create_reference_table('public.attributes');
    ALTER TABLE public.api_keys ADD CONSTRAINT api_keys_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES public.tenants (tenant_id);
    PERFORM create_distributed_table('public.entities', 'tenant_id', colocate_with => 'public.api_keys');
    PERFORM create_distributed_table('public.entity_values_ts', 'tenant_id', colocate_with => 'public.api_keys');
    PERFORM create_distributed_table('public.entity_jsonb', 'tenant_id', colocate_with => 'public.api_keys');
    PERFORM create_distributed_table('public.entity_values_dead_letter', 'tenant_id',
                                     colocate_with => 'public.api_keys');
END
$$;
