-- pginfra: repeatable
-- The guide's monitoring: capped users per timezone, how posts are spread over users, the
-- community health checks (in the shape of monitoring.health(): one row per check, ok, warning
-- or critical, with its thresholds), and a smoke test of the optimized summary. Readable by
-- pg_monitor, like the baseline's monitoring; not by PUBLIC.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
DO $guard$
BEGIN
    IF NOT (to_regprocedure('public.get_user_community_summary_optimized(bigint)') IS NOT NULL) THEN
        RAISE EXCEPTION 'public.get_user_community_summary_optimized(bigint) is missing (050)';
    END IF;
END
$guard$;

CREATE OR REPLACE FUNCTION public.monitor_capped_users_by_timezone()
RETURNS TABLE (timezone text, users bigint, capped_users bigint, capped_pct numeric)
LANGUAGE sql STABLE
AS $$
    SELECT u.timezone,
           count(*),
           count(*) FILTER (WHERE s.posts_today >= u.daily_post_limit),
           round(100.0 * count(*) FILTER (WHERE s.posts_today >= u.daily_post_limit)
                 / count(*), 2)
    FROM public.users AS u
    JOIN public.user_community_stats AS s ON s.user_id = u.id
    GROUP BY u.timezone
    ORDER BY 4 DESC, 1
$$;

CREATE OR REPLACE FUNCTION public.monitor_posts_distribution()
RETURNS TABLE (posts_per_user text, users bigint, posts bigint)
LANGUAGE sql STABLE
AS $$
    WITH per_user AS (
        SELECT u.id, count(p.id) AS n
        FROM public.users AS u
        LEFT JOIN public.posts AS p ON p.user_id = u.id AND p.deleted_at IS NULL
        GROUP BY u.id
    ), bucketed AS (
        SELECT CASE WHEN n = 0 THEN '0' WHEN n <= 5 THEN '1-5' WHEN n <= 20 THEN '6-20'
                    WHEN n <= 100 THEN '21-100' ELSE '>100' END AS bucket,
               CASE WHEN n = 0 THEN 0 WHEN n <= 5 THEN 1 WHEN n <= 20 THEN 2
                    WHEN n <= 100 THEN 3 ELSE 4 END AS ord,
               n
        FROM per_user
    )
    SELECT bucket, count(*), sum(n)::bigint FROM bucketed GROUP BY bucket, ord ORDER BY ord
$$;

CREATE OR REPLACE FUNCTION public.community_system_health(
    capped_warning numeric DEFAULT 20, capped_critical numeric DEFAULT 50,
    missing_stats_warning numeric DEFAULT 1, missing_stats_critical numeric DEFAULT 100,
    reset_lag_hours_warning numeric DEFAULT 2, reset_lag_hours_critical numeric DEFAULT 25)
RETURNS TABLE (check_name text, status text, value numeric, warning numeric, critical numeric,
               detail text)
LANGUAGE sql STABLE
AS $$
    WITH capped AS (
        SELECT coalesce(max(capped_pct), 0) AS pct,
               (array_agg(timezone ORDER BY capped_pct DESC))[1] AS tz
        FROM public.monitor_capped_users_by_timezone()
    ), missing AS (
        SELECT count(*) AS n FROM public.users AS u
        WHERE NOT EXISTS (SELECT FROM public.user_community_stats AS s WHERE s.user_id = u.id)
    ), reset_lag AS (
        -- hours a reset is overdue: since the local midnight after last_reset_date
        SELECT coalesce(max(greatest(extract(epoch FROM (now() AT TIME ZONE u.timezone)
                   - (s.last_reset_date + 1)::timestamp), 0) / 3600), 0) AS hours
        FROM public.user_community_stats AS s
        JOIN public.users AS u ON u.id = s.user_id
        JOIN pg_catalog.pg_timezone_names AS z ON z.name = u.timezone
    ), bad_tz AS (
        SELECT count(*) AS n FROM public.users AS u
        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names AS z WHERE z.name = u.timezone)
    ), checks AS (
        SELECT 'capped users in a timezone (%)' AS check_name, c.pct AS value,
               capped_warning AS warning, capped_critical AS critical,
               'worst timezone: ' || coalesce(c.tz, 'none') AS detail
        FROM capped AS c
        UNION ALL
        SELECT 'users without a stats row', m.n, missing_stats_warning, missing_stats_critical,
               m.n || ' user(s)'
        FROM missing AS m
        UNION ALL
        SELECT 'hours a daily reset is overdue', round(r.hours::numeric, 1),
               reset_lag_hours_warning, reset_lag_hours_critical,
               'public.nightly_reset_local() runs hourly'
        FROM reset_lag AS r
        UNION ALL
        SELECT 'users with an unknown timezone', b.n, 1, 1000000000,
               'their daily limits are never reset'
        FROM bad_tz AS b
    )
    SELECT check_name,
           CASE WHEN value >= critical THEN 'critical'
                WHEN value >= warning THEN 'warning' ELSE 'ok' END,
           value, warning, critical, detail
    FROM checks
$$;

CREATE OR REPLACE FUNCTION public.smoke_test_user_summary(p_user_id bigint)
RETURNS TABLE (field text, optimized text, direct text, matches boolean)
LANGUAGE sql STABLE
AS $$
    WITH o AS (SELECT * FROM public.get_user_community_summary_optimized(p_user_id)),
    d AS (
        SELECT (SELECT count(*) FROM public.posts WHERE user_id = p_user_id) AS total_posts,
               (SELECT count(*) FROM public.post_reactions WHERE user_id = p_user_id)
                   AS reactions_given,
               (SELECT count(*) FROM public.post_reactions AS r
                JOIN public.posts AS p ON p.id = r.post_id WHERE p.user_id = p_user_id)
                   AS total_reactions_received
    )
    SELECT f.field, f.optimized, f.direct, f.optimized IS NOT DISTINCT FROM f.direct
    FROM o, d, LATERAL (VALUES
        ('total_posts', o.total_posts::text, d.total_posts::text),
        ('reactions_given', o.reactions_given::text, d.reactions_given::text),
        ('total_reactions_received', o.total_reactions_received::text,
         d.total_reactions_received::text)) AS f (field, optimized, direct)
$$;

REVOKE ALL ON FUNCTION public.monitor_capped_users_by_timezone() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.monitor_posts_distribution() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.community_system_health(numeric, numeric, numeric, numeric,
                                                      numeric, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.smoke_test_user_summary(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.monitor_capped_users_by_timezone() TO pg_monitor;
GRANT EXECUTE ON FUNCTION public.monitor_posts_distribution() TO pg_monitor;
GRANT EXECUTE ON FUNCTION public.community_system_health(numeric, numeric, numeric, numeric,
                                                         numeric, numeric) TO pg_monitor;
GRANT EXECUTE ON FUNCTION public.smoke_test_user_summary(bigint) TO pg_monitor;
