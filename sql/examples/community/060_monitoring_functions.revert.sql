SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.smoke_test_user_summary(bigint);
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.community_system_health(numeric, numeric, numeric, numeric,
                                                       numeric, numeric);
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.monitor_posts_distribution();
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.monitor_capped_users_by_timezone();
