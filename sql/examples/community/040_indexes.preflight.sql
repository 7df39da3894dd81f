-- The application's columns the indexes cover.
SELECT t.table_name, t.column_name AS missing_column
FROM (VALUES ('posts', 'user_id'),
             ('posts', 'created_at'),
             ('posts', 'deleted_at'),
             ('post_reactions', 'post_id'),
             ('post_reactions', 'user_id'),
             ('post_reactions', 'created_at'),
             ('user_community_stats', 'posts_today')) AS t (table_name, column_name)
WHERE NOT EXISTS (SELECT FROM information_schema.columns AS c
                  WHERE c.table_schema = 'public' AND c.table_name = t.table_name
                    AND c.column_name = t.column_name);
