SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.get_user_community_summary_optimized(bigint);
