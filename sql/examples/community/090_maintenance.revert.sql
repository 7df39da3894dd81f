SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.maintain_community_tables(float8, float8);
