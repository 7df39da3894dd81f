-- The application's columns the monitors read.
SELECT t.table_name, t.column_name AS missing_column
FROM (VALUES ('users', 'timezone'),
             ('users', 'daily_post_limit'),
             ('posts', 'deleted_at'),
             ('user_community_stats', 'last_reset_date')) AS t (table_name, column_name)
WHERE NOT EXISTS (SELECT FROM information_schema.columns AS c
                  WHERE c.table_schema = 'public' AND c.table_name = t.table_name
                    AND c.column_name = t.column_name);
