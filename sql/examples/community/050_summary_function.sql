-- pginfra: repeatable
-- The optimized user summary: one call and one round trip instead of the three queries the
-- application used to make. Reads the stats row (primary key) and counts the user's reactions
-- through idx_post_reactions_user_created. SECURITY INVOKER: callers need SELECT on the tables.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
CREATE OR REPLACE FUNCTION public.get_user_community_summary_optimized(p_user_id bigint)
RETURNS TABLE (
    user_id bigint,
    username text,
    total_posts bigint,
    posts_today bigint,
    daily_post_limit bigint,
    posts_remaining_today bigint,
    reactions_today bigint,
    reactions_given bigint,
    total_reactions_received bigint,
    last_post_at timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT u.id,
           u.username,
           coalesce(s.total_posts, 0),
           coalesce(s.posts_today, 0),
           u.daily_post_limit::bigint,
           greatest(u.daily_post_limit - coalesce(s.posts_today, 0), 0),
           coalesce(s.reactions_today, 0),
           (SELECT count(*) FROM public.post_reactions AS r WHERE r.user_id = u.id),
           coalesce(s.total_reactions_received, 0),
           s.last_post_at
    FROM public.users AS u
    LEFT JOIN public.user_community_stats AS s ON s.user_id = u.id
    WHERE u.id = p_user_id
$$;

COMMENT ON FUNCTION public.get_user_community_summary_optimized(bigint) IS
    'A user''s community summary in one call: posts, limits, reactions (community example).';
