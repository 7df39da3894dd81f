SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-not-null
ALTER TABLE user_community_stats ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE user_community_stats
    ADD CONSTRAINT user_community_stats_user_id_not_null CHECK (user_id IS NOT NULL) NOT VALID;
