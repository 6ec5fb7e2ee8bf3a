-- 0005: tenant API keys, and what the server needs for administration and readiness.
--
-- A key is `atlas_<prefix>_<secret>`: the prefix (12 random characters) finds the row through
-- a unique index; the stored SHA-256 of the whole key is compared in constant time by the
-- server. Only the hash is kept: a leaked table gives no usable key. Keys carry 256 random
-- bits, so a fast hash is enough (no password KDF needed).
-- Not tenant-scoped data in the RLS sense: keys are read *before* a tenant is known (they are
-- how the tenant becomes known), so this table has no policy; the app role cannot read any
-- secret from it.
CREATE TABLE public.api_keys (
    key_id     bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint       NOT NULL REFERENCES public.tenants (tenant_id),
    prefix     text         NOT NULL,
    key_hash   bytea        NOT NULL CHECK (octet_length(key_hash) = 32),
    name       varchar(255) NOT NULL DEFAULT '',
    created_at timestamptz  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX idx_api_keys_prefix ON public.api_keys (prefix);
CREATE INDEX idx_api_keys_tenant ON public.api_keys (tenant_id);

-- Tenant names are how operators find tenants: unique, so `atlas tenant create` is not
-- ambiguous.
CREATE UNIQUE INDEX idx_tenants_name ON public.tenants (tenant_name);

-- The admin API runs in the server, as atlas_app, behind the admin token.
GRANT INSERT, UPDATE ON public.tenants TO atlas_app;
GRANT INSERT, UPDATE ON public.attributes TO atlas_app;
GRANT SELECT, INSERT, UPDATE ON public.api_keys TO atlas_app;
-- /readyz compares the applied migrations with the binary's.
GRANT SELECT ON public.atlas_schema_migrations TO atlas_app;
