-- Reverts 010_views.sql: drops the monitoring views (020 and 030, which read some of them, are
-- reverted first). No CASCADE: a view someone built on top of these makes this fail instead.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-view
DROP VIEW IF EXISTS monitoring.v_wraparound, monitoring.v_blocking_locks,
    monitoring.v_idle_in_transaction, monitoring.v_long_running_sessions,
    monitoring.v_index_bloat, monitoring.v_table_bloat, monitoring.v_invalid_indexes,
    monitoring.v_duplicate_indexes, monitoring.v_unused_indexes, monitoring.v_fk_without_index,
    monitoring.v_database_summary, monitoring.v_cache_hit_ratio, monitoring.v_table_sizes,
    monitoring.v_slow_queries;
