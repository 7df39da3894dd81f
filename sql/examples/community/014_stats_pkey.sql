-- The primary key, from the index 013 built: instant, the column is already NOT NULL.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
DO $guard$
BEGIN
    IF NOT (EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass('public.user_community_stats_pkey') AND indisvalid)) THEN
        RAISE EXCEPTION 'index user_community_stats_pkey is missing or not valid (013)';
    END IF;
END
$guard$;
ALTER TABLE user_community_stats
    ADD CONSTRAINT user_community_stats_pkey PRIMARY KEY USING INDEX user_community_stats_pkey;
