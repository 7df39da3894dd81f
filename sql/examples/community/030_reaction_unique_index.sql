-- pginfra: no-transaction
-- One reaction per user and post: the unique index first, built without blocking writes.
SET lock_timeout = '1s';
SET statement_timeout = '30min';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS post_reactions_unique
    ON post_reactions (post_id, user_id);
