-- Reverts 040_mv_refresh_queue.sql: drops the refresh queue's functions (its tables belong to
-- 001). No CASCADE: while an application's trigger still uses monitoring.enqueue_mv_refresh()
-- this fails; revert that application's bundle first.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS monitoring.process_refresh_queue(boolean),
    monitoring.enqueue_mv_refresh(), monitoring.request_refresh(regclass),
    monitoring.unregister_mv(regclass), monitoring.register_mv(regclass, interval);
