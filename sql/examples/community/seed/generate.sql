-- Generated data for the community example: N users (the setting pginfra.example_users, passed
-- as PGOPTIONS='-c pginfra.example_users=N'), 20 posts each, about 4.5 reactions per post, and
-- their stats rows. Deterministic and clean (no orphans, no duplicate reactions), so the
-- hardening applies; tests add bad rows on purpose.

INSERT INTO users (id, username, email, timezone, created_at)
SELECT g,
       'user' || g,
       'user' || g || '@example.org',
       (ARRAY['UTC', 'Europe/London', 'Europe/Berlin', 'America/New_York',
              'America/Los_Angeles', 'Asia/Tokyo', 'Asia/Kolkata', 'Australia/Sydney',
              'America/Sao_Paulo', 'Africa/Lagos', 'Pacific/Auckland', 'Asia/Singapore'])
           [1 + g % 12],
       now() - (g % 1000) * interval '1 day'
FROM generate_series(1, current_setting('pginfra.example_users')::bigint) AS g;

INSERT INTO posts (user_id, body, created_at, updated_at, deleted_at)
SELECT 1 + (g * 7919) % current_setting('pginfra.example_users')::bigint,
       'post ' || g || ' ' || repeat(md5(g::text), 4),
       now() - (g % 43200) * interval '1 minute',
       now() - (g % 43200) * interval '1 minute',
       CASE WHEN g % 23 = 0 THEN now() - (g % 600) * interval '1 minute' END
FROM generate_series(1, 20 * current_setting('pginfra.example_users')::bigint) AS g;

-- Reactions by distinct users: user (post + k * 104729) mod users for k = 1..n, n <= 9.
INSERT INTO post_reactions (post_id, user_id, kind, created_at)
SELECT p.id,
       1 + (p.id + k * 104729) % current_setting('pginfra.example_users')::bigint,
       (ARRAY['like', 'love', 'laugh', 'insightful'])[1 + (p.id + k) % 4],
       p.created_at + k * interval '1 minute'
FROM posts AS p
CROSS JOIN LATERAL generate_series(1, (p.id % 10)::integer) AS k;

INSERT INTO user_community_stats (user_id, posts_today, reactions_today, total_posts,
                                  total_reactions_received, last_post_at, last_reset_date)
SELECT u.id,
       coalesce(today.n, 0),
       0,
       coalesce(agg.n, 0),
       coalesce(rec.n, 0),
       agg.last_at,
       (now() AT TIME ZONE u.timezone)::date
FROM users AS u
LEFT JOIN (SELECT user_id, count(*) AS n, max(created_at) AS last_at
           FROM posts GROUP BY user_id) AS agg ON agg.user_id = u.id
LEFT JOIN (SELECT user_id, count(*) AS n FROM posts
           WHERE created_at >= current_date GROUP BY user_id) AS today ON today.user_id = u.id
LEFT JOIN (SELECT p.user_id, count(*) AS n FROM post_reactions AS r
           JOIN posts AS p ON p.id = r.post_id GROUP BY p.user_id) AS rec ON rec.user_id = u.id;

SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));

ANALYZE users, posts, post_reactions, user_community_stats;
