SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS public.refresh_user_activity_mv();
DROP TRIGGER IF EXISTS post_reactions_request_activity_refresh ON public.post_reactions;
DROP TRIGGER IF EXISTS posts_request_activity_refresh ON public.posts;
DELETE FROM monitoring.mv_refresh_registry WHERE mv = 'public.user_activity_mv'::regclass;
-- reason: a revert file removes what its migration added
-- squawk-ignore ban-drop-view
DROP MATERIALIZED VIEW IF EXISTS public.user_activity_mv;
