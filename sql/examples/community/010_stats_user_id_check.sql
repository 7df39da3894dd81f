-- user_community_stats.user_id becomes its primary key in four safe steps (010-014). First a
-- CHECK (user_id IS NOT NULL) added NOT VALID: a brief lock, no scan. SET NOT NULL in 012 then
-- trusts the validated check instead of scanning the table under ACCESS EXCLUSIVE.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
ALTER TABLE user_community_stats
    ADD CONSTRAINT user_community_stats_user_id_not_null CHECK (user_id IS NOT NULL) NOT VALID;
