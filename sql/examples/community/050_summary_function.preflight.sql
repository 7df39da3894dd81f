-- The application's columns the summary reads.
SELECT t.table_name, t.column_name AS missing_column
FROM (VALUES ('users', 'username'),
             ('users', 'daily_post_limit'),
             ('user_community_stats', 'total_posts'),
             ('user_community_stats', 'posts_today'),
             ('user_community_stats', 'reactions_today'),
             ('user_community_stats', 'total_reactions_received'),
             ('user_community_stats', 'last_post_at')) AS t (table_name, column_name)
WHERE NOT EXISTS (SELECT FROM information_schema.columns AS c
                  WHERE c.table_schema = 'public' AND c.table_name = t.table_name
                    AND c.column_name = t.column_name);
