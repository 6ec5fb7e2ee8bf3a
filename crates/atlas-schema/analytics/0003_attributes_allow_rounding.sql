-- 0003: the state copy of `attributes` carries every published column of the source, as the
-- others do: `allow_rounding` (added on the primary by its 0006) was missing, so the sink's
-- upsert dropped it. Rows written before this migration have NULL until their next change.
ALTER TABLE public.attributes ADD COLUMN allow_rounding boolean;
