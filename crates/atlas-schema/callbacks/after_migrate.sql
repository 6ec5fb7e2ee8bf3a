-- Runs after every migration run, once the functions are current (Flyway's afterMigrate): the
-- partitions a new database needs before its first reading, and that an existing one may lack
-- when the maintainer has not run for a while. Idempotent; the maintainer does the same hourly.
SELECT public.ensure_ts_partitions(now(), 2);
SELECT public.ensure_entity_partitions(1);
