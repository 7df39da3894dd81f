-- pginfra: repeatable
-- Maintenance planning. VACUUM, ANALYZE of many tables and REINDEX CONCURRENTLY cannot run
-- inside a function, so SQL plans and a host program executes: each *_candidates() function
-- returns the tables or indexes that need the action with the exact statement to run (names
-- quoted and schema-qualified), and the program records what it did through
-- monitoring.log_maintenance() into monitoring.maintenance_log.
--   vacuum_candidates(min_dead_ratio, min_dead_tuples)    dead tuples over a share of the rows
--   analyze_candidates(min_mod_ratio, min_mod_tuples)     rows changed since the last analyze
--   reindex_candidates(min_bloat_ratio, min_bloat_bytes)  btree indexes estimated bloated
--   log_maintenance(action, target, status, detail, started_at) -> id
-- The candidates functions are SECURITY INVOKER and executable by pg_monitor (they only read).
-- log_maintenance is SECURITY DEFINER (it writes as monitoring_owner) and executable by no one
-- but superusers until granted: GRANT EXECUTE on it to the maintenance job's role if that role
-- is not a superuser.
-- CREATE OR REPLACE keeps the functions and their grants; a change of parameters or columns
-- needs a DROP FUNCTION IF EXISTS of the old signature above it.
SET lock_timeout = '1s';
SET statement_timeout = '1min';

CREATE OR REPLACE FUNCTION monitoring.vacuum_candidates(
    min_dead_ratio float8 DEFAULT 0.2, min_dead_tuples bigint DEFAULT 1000)
RETURNS TABLE (schema_name name, table_name name, n_live_tup bigint, n_dead_tup bigint,
               dead_ratio float8, last_vacuum timestamptz, last_autovacuum timestamptz,
               statement text)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup,
           round((s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0)), 4)::float8,
           s.last_vacuum, s.last_autovacuum,
           format('VACUUM (ANALYZE) %I.%I', s.schemaname, s.relname)
    FROM pg_catalog.pg_stat_user_tables AS s
    WHERE s.n_dead_tup >= min_dead_tuples
      AND s.n_dead_tup >= min_dead_ratio * (s.n_live_tup + s.n_dead_tup)
    ORDER BY s.n_dead_tup DESC, 1, 2
$fn$;
COMMENT ON FUNCTION monitoring.vacuum_candidates(float8, bigint) IS
    'Tables with at least min_dead_tuples dead tuples making at least min_dead_ratio of their '
    'rows, most dead first, with the VACUUM (ANALYZE) statement to run.';

CREATE OR REPLACE FUNCTION monitoring.analyze_candidates(
    min_mod_ratio float8 DEFAULT 0.1, min_mod_tuples bigint DEFAULT 1000)
RETURNS TABLE (schema_name name, table_name name, n_live_tup bigint, n_mod_since_analyze bigint,
               mod_ratio float8, last_analyze timestamptz, last_autoanalyze timestamptz,
               statement text)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT s.schemaname, s.relname, s.n_live_tup, s.n_mod_since_analyze,
           round(s.n_mod_since_analyze::numeric / greatest(s.n_live_tup, 1), 4)::float8,
           s.last_analyze, s.last_autoanalyze,
           format('ANALYZE %I.%I', s.schemaname, s.relname)
    FROM pg_catalog.pg_stat_user_tables AS s
    WHERE s.n_mod_since_analyze >= min_mod_tuples
      AND (s.n_mod_since_analyze >= min_mod_ratio * s.n_live_tup
           OR coalesce(s.last_analyze, s.last_autoanalyze) IS NULL)
    ORDER BY s.n_mod_since_analyze DESC, 1, 2
$fn$;
COMMENT ON FUNCTION monitoring.analyze_candidates(float8, bigint) IS
    'Tables with at least min_mod_tuples rows changed since their last analyze, making at least '
    'min_mod_ratio of their live rows (or never analyzed), with the ANALYZE statement to run.';

CREATE OR REPLACE FUNCTION monitoring.reindex_candidates(
    min_bloat_ratio float8 DEFAULT 0.3, min_bloat_bytes bigint DEFAULT 10485760)
RETURNS TABLE (schema_name name, table_name name, index_name name, real_bytes bigint,
               bloat_bytes bigint, bloat_ratio float8, statement text)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT b.schema_name, b.table_name, b.index_name, b.real_bytes, b.bloat_bytes,
           b.bloat_ratio::float8,
           format('REINDEX INDEX CONCURRENTLY %I.%I', b.schema_name, b.index_name)
    FROM monitoring.v_index_bloat AS b
    JOIN pg_catalog.pg_namespace AS n ON n.nspname = b.schema_name
    JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = b.index_name
    JOIN pg_catalog.pg_index AS i ON i.indexrelid = c.oid
    WHERE NOT b.is_na
      AND i.indisvalid
      AND b.bloat_ratio >= min_bloat_ratio
      AND b.bloat_bytes >= min_bloat_bytes
    ORDER BY b.bloat_bytes DESC, 1, 2, 3
$fn$;
COMMENT ON FUNCTION monitoring.reindex_candidates(float8, bigint) IS
    'Valid btree indexes whose estimated bloat (monitoring.v_index_bloat, trustworthy rows only) '
    'is at least min_bloat_ratio of their size and min_bloat_bytes, with the REINDEX INDEX '
    'CONCURRENTLY statement to run (outside a transaction). Needs pg_stats of the tables: run '
    'it as a role that may read them.';

CREATE OR REPLACE FUNCTION monitoring.log_maintenance(
    action text, target text, status text, detail text DEFAULT NULL,
    started_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO monitoring.maintenance_log (started_at, finished_at, action, target, status,
                                            detail)
    VALUES (coalesce($5, pg_catalog.clock_timestamp()), pg_catalog.clock_timestamp(), $1, $2, $3,
            $4)
    RETURNING id
$fn$;
COMMENT ON FUNCTION monitoring.log_maintenance(text, text, text, text, timestamptz) IS
    'Record one maintenance action the host job ran (action e.g. vacuum/analyze/reindex, target '
    'the table or index, status ok/failed/skipped, detail, started_at; finished now). Returns the '
    'maintenance_log id. SECURITY DEFINER: grant EXECUTE to the job''s role if not a superuser.';

ALTER FUNCTION monitoring.vacuum_candidates(float8, bigint) OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.analyze_candidates(float8, bigint) OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.reindex_candidates(float8, bigint) OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.log_maintenance(text, text, text, text, timestamptz)
    OWNER TO monitoring_owner;

REVOKE ALL ON FUNCTION monitoring.vacuum_candidates(float8, bigint),
    monitoring.analyze_candidates(float8, bigint), monitoring.reindex_candidates(float8, bigint),
    monitoring.log_maintenance(text, text, text, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monitoring.vacuum_candidates(float8, bigint),
    monitoring.analyze_candidates(float8, bigint), monitoring.reindex_candidates(float8, bigint)
    TO pg_monitor;
