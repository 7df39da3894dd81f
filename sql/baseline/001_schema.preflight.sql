-- Before the baseline's foundation: each query names a problem and must return no rows.
-- pg_stat_statements must be preloaded by the server (shared_preload_libraries), or reading
-- monitoring.v_slow_queries fails.
SELECT 'shared_preload_libraries does not load pg_stat_statements' AS problem,
       current_setting('shared_preload_libraries') AS shared_preload_libraries
WHERE NOT 'pg_stat_statements' = ANY (string_to_array(
    replace(replace(current_setting('shared_preload_libraries'), ' ', ''), '"', ''), ','));

-- The views read public.pg_stat_statements: an extension installed elsewhere, or one older than
-- 1.8 (no total_exec_time), must be moved or updated by hand first.
SELECT 'pg_stat_statements is installed in another schema or is older than 1.8' AS problem,
       e.extnamespace::regnamespace::text AS schema_name, e.extversion
FROM pg_catalog.pg_extension AS e
WHERE e.extname = 'pg_stat_statements'
  AND (e.extnamespace::regnamespace::text <> 'public'
       OR string_to_array(e.extversion, '.')::int[] < ARRAY[1, 8]);

-- A schema called monitoring that the baseline did not create belongs to someone else.
SELECT 'a schema monitoring exists and is not owned by monitoring_owner' AS problem,
       n.nspowner::regrole::text AS owner
FROM pg_catalog.pg_namespace AS n
WHERE n.nspname = 'monitoring' AND n.nspowner::regrole::text <> 'monitoring_owner';

-- monitoring_owner owns SECURITY DEFINER functions: it must stay a powerless NOLOGIN role.
SELECT 'role monitoring_owner exists with privileges it must not have' AS problem, r.rolname,
       r.rolsuper, r.rolcanlogin, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
       r.rolbypassrls
FROM pg_catalog.pg_roles AS r
WHERE r.rolname = 'monitoring_owner'
  AND (r.rolsuper OR r.rolcanlogin OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication
       OR r.rolbypassrls);
