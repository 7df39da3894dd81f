-- The application's columns the view reads.
SELECT t.table_name, t.column_name AS missing_column
FROM (VALUES ('users', 'timezone'),
             ('posts', 'deleted_at'),
             ('posts', 'created_at'),
             ('post_reactions', 'created_at')) AS t (table_name, column_name)
WHERE NOT EXISTS (SELECT FROM information_schema.columns AS c
                  WHERE c.table_schema = 'public' AND c.table_name = t.table_name
                    AND c.column_name = t.column_name);
