-- Reverts 001_schema.sql: drops the baseline's tables and the monitoring schema (the repeatable
-- files' reverts, run before this one, dropped its views and functions). No CASCADE: anything
-- else put in the schema makes this fail rather than vanish.
-- Kept on purpose: the role monitoring_owner (roles are cluster-wide and the other managed
-- databases' monitoring schemas still use it) and pg_stat_statements with its grants (the
-- deploy's roles step manages the extension in every database).
SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-table
DROP TABLE IF EXISTS monitoring.mv_refresh_log, monitoring.mv_refresh_late_requests,
    monitoring.mv_refresh_registry, monitoring.maintenance_log;
ALTER DEFAULT PRIVILEGES FOR ROLE monitoring_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
-- reason: a revert file removes what its migration added; without CASCADE it fails if anything
-- but the baseline's own objects is left in the schema
-- squawk-ignore ban-drop-schema
DROP SCHEMA IF EXISTS monitoring;
