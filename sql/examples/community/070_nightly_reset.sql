-- pginfra: repeatable
-- The timezone-aware daily reset: each user's posts_today and reactions_today go back to 0 once
-- their own local midnight has passed. Run hourly (cron: SELECT public.nightly_reset_local(););
-- every run resets the users whose new local day began since the last one. Rows the
-- application holds locked right now are skipped, not waited for, and reset by the next run.
-- Users with a timezone PostgreSQL does not know are left alone and reported by
-- public.community_system_health().
SET lock_timeout = '1s';
SET statement_timeout = '1min';

CREATE OR REPLACE FUNCTION public.nightly_reset_local()
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    reset_rows bigint;
BEGIN
    WITH due AS (
        SELECT s.ctid AS row_id, (now() AT TIME ZONE u.timezone)::date AS local_day
        FROM public.user_community_stats AS s
        JOIN public.users AS u ON u.id = s.user_id
        WHERE u.timezone IN (SELECT z.name FROM pg_catalog.pg_timezone_names AS z)
          AND s.last_reset_date < (now() AT TIME ZONE u.timezone)::date
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE public.user_community_stats AS s
    SET posts_today = 0, reactions_today = 0, last_reset_date = due.local_day,
        updated_at = now()
    FROM due
    WHERE s.ctid = due.row_id;
    GET DIAGNOSTICS reset_rows = ROW_COUNT;
    RETURN reset_rows;
END
$$;

COMMENT ON FUNCTION public.nightly_reset_local() IS
    'Reset daily counters of users whose local day has begun; run hourly (community example).';
REVOKE ALL ON FUNCTION public.nightly_reset_local() FROM PUBLIC;
