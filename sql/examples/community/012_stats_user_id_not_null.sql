-- SET NOT NULL finds the validated check and skips the table scan; the check is then redundant.
SET lock_timeout = '1s';
SET statement_timeout = '1min';
-- 010 and 011 must have left a validated check, or SET NOT NULL would scan the table under
-- ACCESS EXCLUSIVE: stop instead.
DO $guard$
BEGIN
    IF NOT (EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'public.user_community_stats'::regclass AND conname = 'user_community_stats_user_id_not_null' AND convalidated)) THEN
        RAISE EXCEPTION 'user_community_stats_user_id_not_null is missing or not validated (010, 011)';
    END IF;
END
$guard$;
-- reason: the validated CHECK (user_id IS NOT NULL) of 010-011 lets SET NOT NULL skip the
-- scan (PostgreSQL 12+); this file's preflight refuses to run without it
-- squawk-ignore adding-not-nullable-field
ALTER TABLE user_community_stats ALTER COLUMN user_id SET NOT NULL;
-- reason: the check only said what NOT NULL now says
-- squawk-ignore ban-drop-constraint
ALTER TABLE user_community_stats DROP CONSTRAINT user_community_stats_user_id_not_null;
