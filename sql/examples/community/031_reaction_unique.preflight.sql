-- The same data check as 030.
SELECT post_id, user_id, count(*) AS n FROM post_reactions
GROUP BY post_id, user_id HAVING count(*) > 1;
