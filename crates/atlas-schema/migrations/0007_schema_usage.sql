-- 0007: the app role's access to the schema, stated rather than inherited.
--
-- Until now atlas_app reached `public` through PostgreSQL's default USAGE grant to PUBLIC,
-- which a hardened cluster (or a recreated schema) does not have. Grant it explicitly, and
-- take CREATE away from everyone but the owner (PostgreSQL 15's default; stated here too).
GRANT USAGE ON SCHEMA public TO atlas_app;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
