-- The application's columns the reset reads and writes.
SELECT t.table_name, t.column_name AS missing_column
FROM (VALUES ('users', 'timezone'),
             ('user_community_stats', 'last_reset_date'),
             ('user_community_stats', 'posts_today'),
             ('user_community_stats', 'reactions_today')) AS t (table_name, column_name)
WHERE NOT EXISTS (SELECT FROM information_schema.columns AS c
                  WHERE c.table_schema = 'public' AND c.table_name = t.table_name
                    AND c.column_name = t.column_name);
