-- The tables it maintains.
SELECT t.name AS missing_table
FROM (VALUES ('users'), ('posts'), ('post_reactions'), ('user_community_stats')) AS t (name)
WHERE to_regclass('public.' || t.name) IS NULL;
