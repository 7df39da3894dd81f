-- The baseline's foundation, applied to every managed database: the NOLOGIN role
-- monitoring_owner (cluster-wide, created once, shared by every database), the schema
-- monitoring it owns, pg_stat_statements readable through pg_read_all_stats only, and the
-- tables of the maintenance side: maintenance_log (what the host's maintenance job did),
-- mv_refresh_registry, mv_refresh_late_requests and mv_refresh_log (the debounced
-- materialized-view refresh queue, see 040_mv_refresh_queue.sql).
--
-- Nobody but monitoring_owner may write the tables: applications enqueue refreshes and the
-- maintenance job logs through SECURITY DEFINER functions (040 and 030). pg_monitor may read
-- everything in the schema. Views and functions follow in the repeatable files 010-040.
SET lock_timeout = '1s';
SET statement_timeout = '1min';

-- Roles are cluster-wide and this bundle is applied to several databases: create the role only
-- if no earlier database created it (a concurrent apply elsewhere may win the race).
DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'monitoring_owner') THEN
        BEGIN
            CREATE ROLE monitoring_owner NOLOGIN NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            RAISE NOTICE 'monitoring_owner was created concurrently by another database''s apply';
        END;
    END IF;
END
$role$;
COMMENT ON ROLE monitoring_owner IS
    'Owns the monitoring schema of every managed database (pginfra baseline); never logs in.';

CREATE SCHEMA IF NOT EXISTS monitoring AUTHORIZATION monitoring_owner;
ALTER SCHEMA monitoring OWNER TO monitoring_owner;
COMMENT ON SCHEMA monitoring IS
    'pginfra baseline: monitoring views, health checks, maintenance planning and the debounced '
    'materialized-view refresh queue. Readable by pg_monitor.';
REVOKE ALL ON SCHEMA monitoring FROM PUBLIC;
GRANT USAGE ON SCHEMA monitoring TO pg_monitor, pg_read_all_stats;

-- Functions monitoring_owner creates in this database are not executable by PUBLIC by default
-- (a per-schema default cannot revoke, hence FOR ROLE; every file also revokes explicitly).
ALTER DEFAULT PRIVILEGES FOR ROLE monitoring_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- The server preloads the library (the preflight checks it); the deploy's roles step may have
-- created the extension already. Installing it grants SELECT to PUBLIC: revoke that.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public;
REVOKE SELECT ON public.pg_stat_statements, public.pg_stat_statements_info FROM PUBLIC;
GRANT SELECT ON public.pg_stat_statements, public.pg_stat_statements_info TO pg_read_all_stats;

-- What the host's maintenance job did (VACUUM, ANALYZE, REINDEX CONCURRENTLY cannot run inside
-- a function): written through monitoring.log_maintenance() only.
CREATE TABLE IF NOT EXISTS monitoring.maintenance_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    action      text        NOT NULL CHECK (action <> ''),
    target      text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('ok', 'failed', 'skipped')),
    detail      text,
    CHECK (finished_at >= started_at)
);
COMMENT ON TABLE monitoring.maintenance_log IS
    'One row per maintenance action the host job ran (VACUUM, ANALYZE, REINDEX ...); written '
    'through monitoring.log_maintenance().';

-- The materialized views whose refresh is debounced: one row each.
CREATE TABLE IF NOT EXISTS monitoring.mv_refresh_registry (
    mv                regclass    PRIMARY KEY,
    min_interval      interval    NOT NULL DEFAULT interval '5 minutes'
                                  CHECK (min_interval >= interval '0'),
    requested_at      timestamptz,
    last_attempt_at   timestamptz,
    last_refreshed_at timestamptz,
    last_status       text        CHECK (last_status IN ('ok', 'failed')),
    last_duration_ms  numeric,
    last_error        text,
    registered_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE monitoring.mv_refresh_registry IS
    'Materialized views refreshed through the debounced queue. requested_at: a refresh is '
    'wanted (set by request_refresh() or the enqueue_mv_refresh trigger); process_refresh_queue() '
    'refreshes at most once per min_interval (counted from last_attempt_at) and clears '
    'requested_at only on success.';

-- Requests made while a refresh of the same view was under way: the requester cannot tell
-- whether its changes made it into that refresh, so it leaves a row here (an INSERT never
-- waits) and the next run refreshes again.
CREATE TABLE IF NOT EXISTS monitoring.mv_refresh_late_requests (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mv           regclass    NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE monitoring.mv_refresh_late_requests IS
    'Refresh requests that arrived while the view was being refreshed; the next '
    'process_refresh_queue() run consumes them. Written by request_refresh() only.';
-- reason: the table is created in this same file, nobody can be using it yet
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS mv_refresh_late_requests_mv ON monitoring.mv_refresh_late_requests (mv);

-- One row per refresh attempt. CONCURRENTLY is a reserved word: the column is spelled quoted
-- here, and read qualified (l.concurrently) or quoted.
CREATE TABLE IF NOT EXISTS monitoring.mv_refresh_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mv           regclass    NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  numeric     NOT NULL CHECK (duration_ms >= 0),
    "concurrently" boolean   NOT NULL,
    status       text        NOT NULL CHECK (status IN ('ok', 'failed')),
    error        text,
    CHECK (status = 'ok' OR error IS NOT NULL)
);
COMMENT ON TABLE monitoring.mv_refresh_log IS
    'One row per refresh attempt made by process_refresh_queue(): how long it took, whether it '
    'ran CONCURRENTLY, and the error of a failed one.';
-- reason: the table is created in this same file, nobody can be using it yet
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS mv_refresh_log_mv_started ON monitoring.mv_refresh_log (mv, started_at);

ALTER TABLE monitoring.maintenance_log OWNER TO monitoring_owner;
ALTER TABLE monitoring.mv_refresh_registry OWNER TO monitoring_owner;
ALTER TABLE monitoring.mv_refresh_late_requests OWNER TO monitoring_owner;
ALTER TABLE monitoring.mv_refresh_log OWNER TO monitoring_owner;

-- Read-only for monitoring; writable by their owner alone.
REVOKE ALL ON monitoring.maintenance_log, monitoring.mv_refresh_registry,
    monitoring.mv_refresh_late_requests, monitoring.mv_refresh_log FROM PUBLIC;
GRANT SELECT ON monitoring.maintenance_log, monitoring.mv_refresh_registry,
    monitoring.mv_refresh_late_requests, monitoring.mv_refresh_log TO pg_monitor;
