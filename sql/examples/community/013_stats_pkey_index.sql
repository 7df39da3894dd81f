-- pginfra: no-transaction
-- The primary key's index, built without blocking writes. A build that failed half way left an
-- INVALID index of this name: the runner drops and rebuilds it.
SET lock_timeout = '1s';
SET statement_timeout = '30min';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS user_community_stats_pkey
    ON user_community_stats (user_id);
