-- pginfra: no-transaction
SET lock_timeout = '1s';
SET statement_timeout = '30min';
DROP INDEX CONCURRENTLY IF EXISTS idx_stats_posts_today;
DROP INDEX CONCURRENTLY IF EXISTS idx_posts_id_user_deleted;
DROP INDEX CONCURRENTLY IF EXISTS idx_post_reactions_user_created;
DROP INDEX CONCURRENTLY IF EXISTS idx_post_reactions_post_created;
DROP INDEX CONCURRENTLY IF EXISTS idx_posts_user_created;
DROP INDEX CONCURRENTLY IF EXISTS idx_posts_user_active_created;
