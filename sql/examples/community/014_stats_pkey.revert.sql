-- Dropping the constraint drops its index too; reverting 013 then has nothing left to drop.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-constraint
ALTER TABLE user_community_stats DROP CONSTRAINT IF EXISTS user_community_stats_pkey;
