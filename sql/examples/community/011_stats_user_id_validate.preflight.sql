SELECT ctid, * FROM user_community_stats WHERE user_id IS NULL;
