-- Orphans: rows pointing at a user or post that does not exist. Each query must return nothing;
-- fix the data by hand (pginfra never deletes or rewrites rows to make a constraint fit).
SELECT s.ctid, s.user_id FROM user_community_stats AS s
WHERE NOT EXISTS (SELECT FROM users AS u WHERE u.id = s.user_id);
SELECT p.id, p.user_id FROM posts AS p
WHERE NOT EXISTS (SELECT FROM users AS u WHERE u.id = p.user_id);
SELECT r.id, r.post_id FROM post_reactions AS r
WHERE NOT EXISTS (SELECT FROM posts AS p WHERE p.id = r.post_id);
SELECT r.id, r.user_id FROM post_reactions AS r
WHERE NOT EXISTS (SELECT FROM users AS u WHERE u.id = r.user_id);
