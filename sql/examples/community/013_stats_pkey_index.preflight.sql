-- Two stats rows for one user: merge them by hand first; pginfra never deletes rows to fit.
SELECT user_id, count(*) AS n FROM user_community_stats GROUP BY user_id HAVING count(*) > 1;
