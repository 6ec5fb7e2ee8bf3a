-- Analytics store (the seed's Redshift): a separate database that `atlas cdc` fills from the
-- logical slot of the publication eav_cdc, in batches.
--
-- Two shapes of the same changes:
-- * cdc.change_events: every change event once (deduplicated by LSN + table + primary key),
--   with op, before and after as the Debezium envelope carried them — the history. Rows of
--   the initial snapshot are op 'r' at the slot's starting LSN.
-- * public.<table>: the current state of each published table, same columns as the source plus
--   the LSN and commit time of the change that wrote the row, so the API's reads run here
--   unchanged with consistency `analytics`.
-- cdc.sink_progress holds, per slot, the end LSN of the last transaction applied; the sink
-- skips transactions at or below it, so a replay after a crash applies nothing twice.
--
-- Runs as atlas_owner. The sink writes as a superuser (as it reads the slot); the server reads
-- as atlas_app under forced RLS with the same tenant context as on the primary.

CREATE SCHEMA cdc;

CREATE TABLE cdc.sink_progress (
    slot_name  text        PRIMARY KEY,
    end_lsn    bigint      NOT NULL,
    commit_ts  timestamptz NOT NULL,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    events     bigint      NOT NULL DEFAULT 0
);

CREATE TABLE cdc.change_events (
    table_name text        NOT NULL,
    key        jsonb       NOT NULL,
    lsn        bigint      NOT NULL,
    op         char(1)     NOT NULL CHECK (op IN ('r', 'c', 'u', 'd', 't')),
    tx_id      bigint      NOT NULL,
    commit_ts  timestamptz NOT NULL,
    tenant_id  bigint,
    before     jsonb,
    after      jsonb,
    synced_at  timestamptz NOT NULL DEFAULT now(),
    -- LSN first: new events append at the index's right edge and compare on a bigint.
    PRIMARY KEY (lsn, table_name, key)
);
CREATE INDEX idx_change_events_tenant ON cdc.change_events (tenant_id, commit_ts);
CREATE INDEX idx_change_events_commit ON cdc.change_events USING brin (commit_ts);

CREATE TABLE public.attributes (
    attribute_id     bigint       PRIMARY KEY,
    attribute_name   varchar(255),
    data_type        varchar(50),
    is_indexed       boolean,
    is_hot           boolean,
    validation_regex text,
    created_at       timestamptz,
    updated_at       timestamptz,
    _lsn             bigint       NOT NULL,
    _commit_ts       timestamptz  NOT NULL
);

CREATE TABLE public.entities (
    entity_id   bigint       NOT NULL,
    tenant_id   bigint       NOT NULL,
    entity_type varchar(100),
    created_at  timestamptz,
    updated_at  timestamptz,
    is_deleted  boolean,
    version     integer,
    _lsn        bigint       NOT NULL,
    _commit_ts  timestamptz  NOT NULL,
    PRIMARY KEY (entity_id, tenant_id)
);
CREATE INDEX idx_an_entities_tenant ON public.entities (tenant_id, entity_type);

CREATE TABLE public.entity_jsonb (
    entity_id    bigint      NOT NULL,
    tenant_id    bigint      NOT NULL,
    hot_attrs    jsonb,
    hot_attrs_at jsonb,
    cold_attrs   jsonb,
    updated_at   timestamptz,
    _lsn         bigint      NOT NULL,
    _commit_ts   timestamptz NOT NULL,
    PRIMARY KEY (entity_id, tenant_id)
);

-- Not partitioned: an analytic copy, scanned by tenant/attribute/time.
CREATE TABLE public.entity_values_ts (
    entity_id       bigint        NOT NULL,
    tenant_id       bigint        NOT NULL,
    attribute_id    bigint        NOT NULL,
    value           text,
    value_int       bigint,
    value_decimal   numeric(20, 5),
    value_bool      boolean,
    value_date      date,
    value_timestamp timestamptz,
    ingested_at     timestamptz   NOT NULL,
    created_at      timestamptz,
    _lsn            bigint        NOT NULL,
    _commit_ts      timestamptz   NOT NULL,
    PRIMARY KEY (tenant_id, entity_id, attribute_id, ingested_at)
);
CREATE INDEX idx_an_values_attr_time ON public.entity_values_ts (tenant_id, attribute_id, ingested_at);
CREATE INDEX idx_an_values_brin ON public.entity_values_ts USING brin (ingested_at);

-- Tenant isolation, as on the primary: forced RLS, the tenant from the transaction's context,
-- fail closed when it is unset.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['public.entities', 'public.entity_jsonb', 'public.entity_values_ts', 'cdc.change_events'] LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %s USING (tenant_id = NULLIF(current_setting(''app.current_tenant_id'', true), '''')::bigint)',
            t);
    END LOOP;
END
$$;

-- The server reads the state tables and the sink's progress (for the lag it reports); the
-- history is for analysts (owner/superuser).
GRANT USAGE ON SCHEMA cdc TO atlas_app;
GRANT SELECT ON cdc.sink_progress TO atlas_app;
GRANT SELECT ON public.attributes, public.entities, public.entity_jsonb, public.entity_values_ts TO atlas_app;
REVOKE ALL ON cdc.change_events FROM PUBLIC;
