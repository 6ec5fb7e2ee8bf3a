-- 0002: what `atlas cdc` prunes. The history (cdc.change_events) is deleted by commit time
-- past `[cdc] history_retention_days` (its BRIN index on commit_ts serves that), and the
-- state copy of the time series follows the primary's retention: rows older than the
-- primary's oldest partition are gone there (a dropped partition sends no delete events), so
-- they go here too. Rows arrive roughly in time order, so a BRIN index finds them cheaply.
CREATE INDEX idx_an_values_ingested_brin ON public.entity_values_ts USING brin (ingested_at);
