-- pginfra: no-transaction
-- Validate the check in its own transaction: a scan under SHARE UPDATE EXCLUSIVE, which lets
-- reads and writes go on.
SET lock_timeout = '1s';
SET statement_timeout = '30min';
-- reason: VALIDATE is idempotent; run again after a failure it just validates
-- squawk-ignore prefer-robust-stmts
ALTER TABLE user_community_stats VALIDATE CONSTRAINT user_community_stats_user_id_not_null;
