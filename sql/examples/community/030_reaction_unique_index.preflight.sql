-- Duplicate reactions: keep one of each by hand first; pginfra never deletes rows to fit.
SELECT post_id, user_id, count(*) AS n FROM post_reactions
GROUP BY post_id, user_id HAVING count(*) > 1;
