-- pginfra: no-transaction
-- The targeted indexes of the guide, each built CONCURRENTLY in its own transaction. The
-- user_id ones also support the foreign keys of 020 (deletes of users, cascades).
SET lock_timeout = '1s';
SET statement_timeout = '30min';
-- a user's live posts, newest first (profile and dashboard pages)
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_user_active_created
    ON posts (user_id, created_at DESC) WHERE deleted_at IS NULL;
-- a user's posts including deleted ones (moderation, totals, the posts_user_fk)
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_user_created
    ON posts (user_id, created_at DESC);
-- a post's reactions, newest first
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_post_reactions_post_created
    ON post_reactions (post_id, created_at DESC);
-- a user's reactions (reactions_today, the post_reactions_user_fk)
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_post_reactions_user_created
    ON post_reactions (user_id, created_at DESC);
-- live posts with their author, for joins from reactions without visiting the heap
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_posts_id_user_deleted
    ON posts (id) INCLUDE (user_id) WHERE deleted_at IS NULL;
-- users who posted today (the capped-users monitor)
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_stats_posts_today
    ON user_community_stats (posts_today) WHERE posts_today > 0;
