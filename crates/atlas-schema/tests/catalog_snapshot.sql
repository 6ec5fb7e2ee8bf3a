-- One row per schema object of `public` (and the roles' default privileges), described by what
-- PostgreSQL would rebuild it from: equal outputs mean equal schemas. Storage-only state (a
-- column's atthasmissing after ADD COLUMN … DEFAULT, relfilenodes, statistics) is left out.
SELECT kind, name, detail FROM (
    SELECT 'relation' AS kind, c.relname::text AS name,
           concat_ws(' | ', c.relkind, c.relpersistence, pg_get_userbyid(c.relowner), c.relacl::text,
                     c.reloptions::text, c.relrowsecurity, c.relforcerowsecurity,
                     pg_get_expr(c.relpartbound, c.oid), pg_get_partkeydef(c.oid),
                     obj_description(c.oid, 'pg_class')) AS detail
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'column', c.relname || '.' || a.attname,
           concat_ws(' | ', a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                     pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attacl::text,
                     col_description(c.oid, a.attnum))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'index', c.relname, pg_get_indexdef(c.oid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'constraint', t.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
    WHERE t.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'policy', p.tablename || '.' || p.policyname,
           concat_ws(' | ', p.permissive, p.roles::text, p.cmd, p.qual, p.with_check)
    FROM pg_policies p WHERE p.schemaname = 'public'
    UNION ALL
    SELECT 'view', c.relname, pg_get_viewdef(c.oid)
    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text,
           concat_ws(' | ', pg_get_userbyid(p.proowner), p.proacl::text, pg_get_functiondef(p.oid))
    FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
    UNION ALL
    SELECT 'sequence', s.seqrelid::regclass::text,
           concat_ws(' | ', s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle)
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
    WHERE c.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'publication', p.pubname,
           concat_ws(' | ', p.pubviaroot, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
                     (SELECT string_agg(t.schemaname || '.' || t.tablename || coalesce(t.attnames::text, ''), ', '
                             ORDER BY t.tablename)
                      FROM pg_publication_tables t WHERE t.pubname = p.pubname))
    FROM pg_publication p
    UNION ALL
    SELECT 'schema', n.nspname, concat_ws(' | ', pg_get_userbyid(n.nspowner), n.nspacl::text)
    FROM pg_namespace n WHERE n.nspname = 'public'
    UNION ALL
    SELECT 'default acl', pg_get_userbyid(d.defaclrole) || ' ' || d.defaclobjtype::text,
           concat_ws(' | ', d.defaclnamespace::regnamespace, d.defaclacl::text)
    FROM pg_default_acl d
) objects
WHERE name NOT LIKE 'atlas\_schema\_%'
ORDER BY kind, name, detail;
