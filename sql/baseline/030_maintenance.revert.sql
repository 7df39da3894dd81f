-- Reverts 030_maintenance.sql: drops the maintenance planning functions and log_maintenance()
-- (the maintenance_log table belongs to 001).
SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS monitoring.log_maintenance(text, text, text, text, timestamptz),
    monitoring.reindex_candidates(float8, bigint), monitoring.analyze_candidates(float8, bigint),
    monitoring.vacuum_candidates(float8, bigint);
