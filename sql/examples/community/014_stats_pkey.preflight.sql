-- The same data check as 013.
SELECT user_id, count(*) AS n FROM user_community_stats GROUP BY user_id HAVING count(*) > 1;
