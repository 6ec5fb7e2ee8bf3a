-- 0023: hot_attr_backfill projects a batch of entities per call (functions/projection.sql:
-- keyset position and batch size), so the server can report its progress between batches.
-- The one-argument form goes.
DROP FUNCTION IF EXISTS public.hot_attr_backfill(bigint);
