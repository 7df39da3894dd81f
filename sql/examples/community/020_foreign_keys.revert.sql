SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-constraint
ALTER TABLE post_reactions DROP CONSTRAINT IF EXISTS post_reactions_user_fk;
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-constraint
ALTER TABLE post_reactions DROP CONSTRAINT IF EXISTS post_reactions_post_fk;
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-constraint
ALTER TABLE posts DROP CONSTRAINT IF EXISTS posts_user_fk;
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-constraint
ALTER TABLE user_community_stats DROP CONSTRAINT IF EXISTS user_community_stats_user_fk;
