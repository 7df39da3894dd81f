SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-constraint
ALTER TABLE post_reactions DROP CONSTRAINT IF EXISTS post_reactions_unique;
