-- Typed values: the checks and the JSON form every flush and projection path shares.
--
-- Applied after the versioned migrations whenever this file changes (see the README's
-- "Schema" section): each function has exactly this one definition. EXECUTE is revoked from
-- PUBLIC function by function - per-schema default privileges cannot take away PostgreSQL's
-- global default grant.
--
-- These helpers are IMMUTABLE or STABLE, not SECURITY DEFINER, and carry no SET clause: a SQL
-- function with one is never inlined, and every call goes through the configuration
-- save/restore path (measured per 4 000-value batch of ingest_rows: value_matches_type 23 ms,
-- typed_value_jsonb 12 ms). The flush's definer functions call them with their own pinned
-- search_path in force (an inlined body is parsed under it); their bodies name only
-- pg_catalog objects and schema-qualified public ones.

-- The JSON form of a typed value, so the projection is typed: 8, not "8" (containment is
-- type-sensitive). Decimals lose trailing zeros; dates and timestamps are RFC 3339 strings in UTC.
-- STABLE: to_char is (declared IMMUTABLE it could never be inlined). No index uses it.
CREATE OR REPLACE FUNCTION public.typed_value_jsonb(
    p_data_type text, p_value text, p_int bigint, p_dec numeric, p_bool boolean, p_date date, p_ts timestamptz)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE p_data_type
        WHEN 'string'    THEN to_jsonb(p_value)
        WHEN 'json'      THEN p_value::jsonb
        WHEN 'integer'   THEN to_jsonb(p_int)
        WHEN 'decimal'   THEN to_jsonb(trim_scale(p_dec))
        WHEN 'boolean'   THEN to_jsonb(p_bool)
        WHEN 'date'      THEN to_jsonb(to_char(p_date, 'YYYY-MM-DD'))
        WHEN 'timestamp' THEN to_jsonb(to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    END
$$;
REVOKE EXECUTE ON FUNCTION public.typed_value_jsonb(text,text,bigint,numeric,boolean,date,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.typed_value_jsonb(text,text,bigint,numeric,boolean,date,timestamp with time zone) TO atlas_definer;

-- True when text parses as JSON (PostgreSQL 15 has no IS JSON predicate).
CREATE OR REPLACE FUNCTION public.is_json_text(p_text text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM p_text::jsonb;
    RETURN TRUE;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN FALSE;
END
$$;
REVOKE EXECUTE ON FUNCTION public.is_json_text(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.is_json_text(text) TO atlas_definer;

-- True when a staged row sets exactly the one column its attribute's data_type uses.
CREATE OR REPLACE FUNCTION public.value_matches_type(
    p_data_type text, p_value text, p_int bigint, p_dec numeric, p_bool boolean, p_date date, p_ts timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT num_nonnulls(p_value, p_int, p_dec, p_bool, p_date, p_ts) = 1
       AND CASE p_data_type
               WHEN 'string'    THEN p_value IS NOT NULL
               WHEN 'json'      THEN p_value IS NOT NULL AND public.is_json_text(p_value)
               WHEN 'integer'   THEN p_int IS NOT NULL
               WHEN 'decimal'   THEN p_dec IS NOT NULL AND p_dec <> 'NaN'::numeric
               WHEN 'boolean'   THEN p_bool IS NOT NULL
               WHEN 'date'      THEN p_date IS NOT NULL
               WHEN 'timestamp' THEN p_ts IS NOT NULL
               ELSE FALSE
           END
$$;
REVOKE EXECUTE ON FUNCTION public.value_matches_type(text,text,bigint,numeric,boolean,date,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.value_matches_type(text,text,bigint,numeric,boolean,date,timestamp with time zone) TO atlas_definer;

-- True when a JSON value is acceptable for a data_type (used by upsert_hot_attrs).
CREATE OR REPLACE FUNCTION public.jsonb_matches_type(p_data_type text, p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE p_data_type
        WHEN 'string'    THEN jsonb_typeof(p_value) = 'string'
        WHEN 'json'      THEN p_value IS NOT NULL
        WHEN 'integer'   THEN jsonb_typeof(p_value) = 'number'
                              AND (p_value #>> '{}')::numeric = trunc((p_value #>> '{}')::numeric)
                              AND (p_value #>> '{}')::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
        WHEN 'decimal'   THEN jsonb_typeof(p_value) = 'number'
        WHEN 'boolean'   THEN jsonb_typeof(p_value) = 'boolean'
        WHEN 'date'      THEN jsonb_typeof(p_value) = 'string'
        WHEN 'timestamp' THEN jsonb_typeof(p_value) = 'string'
        ELSE FALSE
    END
$$;
REVOKE EXECUTE ON FUNCTION public.jsonb_matches_type(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.jsonb_matches_type(text,jsonb) TO atlas_definer;
