-- Stats rows without a user cannot get a primary key: fix or remove them by hand first.
SELECT ctid, * FROM user_community_stats WHERE user_id IS NULL;
