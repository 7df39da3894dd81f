-- The same data check as 010: a NULL user_id would fail SET NOT NULL.
SELECT ctid, * FROM user_community_stats WHERE user_id IS NULL;
