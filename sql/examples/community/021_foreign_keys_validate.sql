-- pginfra: no-transaction
-- Each validation in its own transaction, under SHARE UPDATE EXCLUSIVE on the referencing table
-- and ROW SHARE on the referenced one: reads and writes go on while the rows are checked.
SET lock_timeout = '1s';
SET statement_timeout = '30min';
-- reason: VALIDATE is idempotent; run again after a failure it just validates
-- squawk-ignore prefer-robust-stmts
ALTER TABLE user_community_stats VALIDATE CONSTRAINT user_community_stats_user_fk;
-- reason: VALIDATE is idempotent; run again after a failure it just validates
-- squawk-ignore prefer-robust-stmts
ALTER TABLE posts VALIDATE CONSTRAINT posts_user_fk;
-- reason: VALIDATE is idempotent; run again after a failure it just validates
-- squawk-ignore prefer-robust-stmts
ALTER TABLE post_reactions VALIDATE CONSTRAINT post_reactions_post_fk;
-- reason: VALIDATE is idempotent; run again after a failure it just validates
-- squawk-ignore prefer-robust-stmts
ALTER TABLE post_reactions VALIDATE CONSTRAINT post_reactions_user_fk;
