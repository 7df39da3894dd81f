-- pginfra: repeatable
-- monitoring.health(): the database's health in one call, one row per check:
--   check_name, status ('ok' | 'warning' | 'critical'), value, warning, critical, detail.
-- A check is critical when value reaches critical, else warning when it reaches warning (for
-- cache_hit_ratio, where lower is worse: when value falls below them). A NULL threshold never
-- fires; a NULL value (nothing to measure yet) is ok. Thresholds are parameters, defaults from
-- the engineering notes; call with named arguments to change some, e.g.
--   SELECT * FROM monitoring.health(idle_in_transaction_warning => 60);
-- SECURITY INVOKER: a pg_monitor member sees every session; others see less of them, which is
-- why EXECUTE is granted to pg_monitor only.
SET lock_timeout = '1s';
SET statement_timeout = '1min';

-- CREATE OR REPLACE keeps the function and its grants; a change of its parameters or columns
-- needs a DROP FUNCTION IF EXISTS of the old signature above it.
CREATE OR REPLACE FUNCTION monitoring.health(
    connections_warning numeric DEFAULT 75,            -- % of max_connections in use
    connections_critical numeric DEFAULT 90,
    idle_in_transaction_warning numeric DEFAULT 300,   -- seconds the oldest has been idle
    idle_in_transaction_critical numeric DEFAULT 900,
    long_running_warning numeric DEFAULT 300,          -- seconds the oldest statement has run
    long_running_critical numeric DEFAULT 1800,
    lock_wait_warning numeric DEFAULT 30,              -- seconds the longest lock wait has lasted
    lock_wait_critical numeric DEFAULT 300,
    wraparound_warning numeric DEFAULT 50,             -- % of the 2^31 XID horizon used
    wraparound_critical numeric DEFAULT 75,
    cache_hit_warning numeric DEFAULT 0.95,            -- ratio; lower is worse
    cache_hit_critical numeric DEFAULT 0.90,
    invalid_indexes_warning numeric DEFAULT 1,         -- count (not being built right now)
    invalid_indexes_critical numeric DEFAULT NULL,
    mv_refresh_failed_warning numeric DEFAULT 1,       -- registered views whose last refresh failed
    mv_refresh_failed_critical numeric DEFAULT NULL)
RETURNS TABLE (check_name text, status text, value numeric, warning numeric, critical numeric,
               detail text)
LANGUAGE sql
STABLE
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $health$
WITH clients AS (
    -- client sessions other than this one
    SELECT a.*
    FROM pg_catalog.pg_stat_activity AS a
    WHERE a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()
), connections AS (
    SELECT 'connections' AS check_name, 1 AS ord,
           round(100.0 * count(*) / current_setting('max_connections')::int, 1) AS value,
           connections_warning AS warning, connections_critical AS critical,
           false AS lower_is_worse,
           format('%s of max_connections %s in use (%s of them reserved for superusers)',
                  count(*), current_setting('max_connections'),
                  current_setting('superuser_reserved_connections')) AS detail
    FROM pg_catalog.pg_stat_activity AS a
    WHERE a.backend_type = 'client backend'
), idle AS (
    SELECT 'idle_in_transaction', 2,
           round(extract(epoch FROM now() - min(c.state_change)), 1),
           idle_in_transaction_warning, idle_in_transaction_critical, false,
           CASE WHEN count(*) = 0 THEN 'no session is idle in a transaction'
                ELSE format('%s session(s) idle in a transaction; the oldest: pid %s (%s)',
                            count(*), (array_agg(c.pid ORDER BY c.state_change))[1],
                            (array_agg(c.usename ORDER BY c.state_change))[1]) END
    FROM clients AS c
    WHERE c.state IN ('idle in transaction', 'idle in transaction (aborted)')
), running AS (
    SELECT 'long_running_queries', 3,
           round(extract(epoch FROM now() - min(c.query_start)), 1),
           long_running_warning, long_running_critical, false,
           CASE WHEN count(*) = 0 THEN 'no other statement is running'
                ELSE format('%s statement(s) running; the oldest: pid %s (%s)', count(*),
                            (array_agg(c.pid ORDER BY c.query_start))[1],
                            (array_agg(c.usename ORDER BY c.query_start))[1]) END
    FROM clients AS c
    WHERE c.state = 'active'
), waits AS (
    SELECT 'lock_waits', 4,
           round(extract(epoch FROM now() - min(l.waitstart)), 1),
           lock_wait_warning, lock_wait_critical, false,
           CASE WHEN count(DISTINCT l.pid) = 0 THEN 'no session is waiting for a lock'
                ELSE format('%s session(s) waiting for a lock; see monitoring.v_blocking_locks',
                            count(DISTINCT l.pid)) END
    FROM pg_catalog.pg_locks AS l
    WHERE NOT l.granted
), wraparound AS (
    SELECT 'wraparound', 5,
           round(100.0 * max(age(d.datfrozenxid)) / 2147483648, 2),
           wraparound_warning, wraparound_critical, false,
           format('oldest: database %s, XID age %s',
                  (array_agg(d.datname ORDER BY age(d.datfrozenxid) DESC))[1],
                  max(age(d.datfrozenxid)))
    FROM pg_catalog.pg_database AS d
), cache AS (
    SELECT 'cache_hit_ratio', 6,
           round(d.blks_hit::numeric / nullif(d.blks_hit + d.blks_read, 0), 4),
           cache_hit_warning, cache_hit_critical, true,
           format('database %s: %s blocks found in shared buffers, %s read since %s',
                  d.datname, d.blks_hit, d.blks_read,
                  coalesce(d.stats_reset::text, 'the cluster was created'))
    FROM pg_catalog.pg_stat_database AS d
    WHERE d.datname = pg_catalog.current_database()
), invalid AS (
    SELECT 'invalid_indexes', 7,
           count(*)::numeric,
           invalid_indexes_warning, invalid_indexes_critical, false,
           CASE WHEN count(*) = 0 THEN 'no invalid index'
                ELSE 'invalid: ' || string_agg(i.indexrelid::regclass::text, ', ')
                     || '; see monitoring.v_invalid_indexes' END
    FROM pg_catalog.pg_index AS i
    WHERE NOT i.indisvalid
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_create_index AS p
                      WHERE p.index_relid = i.indexrelid)
), mv AS (
    SELECT 'mv_refresh_failed', 8,
           count(*)::numeric,
           mv_refresh_failed_warning, mv_refresh_failed_critical, false,
           CASE WHEN count(*) = 0 THEN 'no registered materialized view failed its last refresh'
                ELSE 'last refresh failed: ' || string_agg(r.mv::text, ', ')
                     || '; see monitoring.mv_refresh_log' END
    FROM monitoring.mv_refresh_registry AS r
    WHERE r.last_status = 'failed'
), checks AS (
    SELECT * FROM connections
    UNION ALL SELECT * FROM idle
    UNION ALL SELECT * FROM running
    UNION ALL SELECT * FROM waits
    UNION ALL SELECT * FROM wraparound
    UNION ALL SELECT * FROM cache
    UNION ALL SELECT * FROM invalid
    UNION ALL SELECT * FROM mv
)
SELECT c.check_name,
       CASE WHEN c.value IS NULL THEN 'ok'
            WHEN NOT c.lower_is_worse AND c.value >= c.critical THEN 'critical'
            WHEN NOT c.lower_is_worse AND c.value >= c.warning THEN 'warning'
            WHEN c.lower_is_worse AND c.value < c.critical THEN 'critical'
            WHEN c.lower_is_worse AND c.value < c.warning THEN 'warning'
            ELSE 'ok' END,
       c.value, c.warning, c.critical, c.detail
FROM checks AS c
ORDER BY c.ord
$health$;

COMMENT ON FUNCTION monitoring.health(numeric, numeric, numeric, numeric, numeric, numeric,
    numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric) IS
    'One row per health check (connections %, idle_in_transaction s, long_running_queries s, '
    'lock_waits s, wraparound %, cache_hit_ratio, invalid_indexes, mv_refresh_failed): status '
    'ok/warning/critical, the measured value, its thresholds (parameters) and a detail.';
ALTER FUNCTION monitoring.health(numeric, numeric, numeric, numeric, numeric, numeric,
    numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric)
    OWNER TO monitoring_owner;
REVOKE ALL ON FUNCTION monitoring.health(numeric, numeric, numeric, numeric, numeric, numeric,
    numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monitoring.health(numeric, numeric, numeric, numeric, numeric,
    numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric,
    numeric) TO pg_monitor;
