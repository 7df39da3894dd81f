-- The users' activity over the last 30 days, as a materialized view for the admin dashboard,
-- refreshed through the baseline's debounced queue: writes to posts and post_reactions request
-- a refresh (one cheap statement-level trigger each), and the maintenance job's
-- monitoring.process_refresh_queue() refreshes it CONCURRENTLY at most every 15 minutes.
-- Building it reads the tables under ACCESS SHARE only; writers are not blocked.
SET lock_timeout = '1s';
SET statement_timeout = '30min';
-- The refresh queue comes from the baseline bundle.
DO $guard$
BEGIN
    IF NOT (to_regprocedure('monitoring.register_mv(regclass, interval)') IS NOT NULL) THEN
        RAISE EXCEPTION 'monitoring.register_mv(regclass, interval) is missing: apply sql/baseline to this database first';
    END IF;
END
$guard$;

CREATE MATERIALIZED VIEW IF NOT EXISTS public.user_activity_mv AS
SELECT u.id AS user_id,
       u.timezone,
       coalesce(p.posts_30d, 0) AS posts_30d,
       coalesce(r.reactions_30d, 0) AS reactions_given_30d,
       greatest(p.last_post_at, r.last_reaction_at) AS last_active_at
FROM public.users AS u
LEFT JOIN (SELECT user_id, count(*) AS posts_30d, max(created_at) AS last_post_at
           FROM public.posts
           WHERE deleted_at IS NULL AND created_at > now() - interval '30 days'
           GROUP BY user_id) AS p ON p.user_id = u.id
LEFT JOIN (SELECT user_id, count(*) AS reactions_30d, max(created_at) AS last_reaction_at
           FROM public.post_reactions
           WHERE created_at > now() - interval '30 days'
           GROUP BY user_id) AS r ON r.user_id = u.id;

-- reason: the view is created in this same file; nothing can be reading it yet. The unique
-- index is what lets REFRESH MATERIALIZED VIEW CONCURRENTLY run.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX IF NOT EXISTS user_activity_mv_user_id ON public.user_activity_mv (user_id);

SELECT monitoring.register_mv('public.user_activity_mv', interval '15 minutes');

CREATE OR REPLACE TRIGGER posts_request_activity_refresh
    AFTER INSERT OR UPDATE OR DELETE ON public.posts
    FOR EACH STATEMENT EXECUTE FUNCTION monitoring.enqueue_mv_refresh('public.user_activity_mv');
CREATE OR REPLACE TRIGGER post_reactions_request_activity_refresh
    AFTER INSERT OR UPDATE OR DELETE ON public.post_reactions
    FOR EACH STATEMENT EXECUTE FUNCTION monitoring.enqueue_mv_refresh('public.user_activity_mv');

-- The guide's daily cron entry point: request a refresh and process the queue now.
CREATE OR REPLACE FUNCTION public.refresh_user_activity_mv()
RETURNS TABLE (mv text, status text, duration_ms numeric, refreshed_concurrently boolean)
LANGUAGE sql
AS $$
    SELECT monitoring.request_refresh('public.user_activity_mv');
    SELECT q.mv::text, q.status, q.duration_ms::numeric, q.concurrently
    FROM monitoring.process_refresh_queue(true) AS q
$$;
REVOKE ALL ON FUNCTION public.refresh_user_activity_mv() FROM PUBLIC;
