-- pginfra: no-transaction
SET lock_timeout = '1s';
SET statement_timeout = '30min';
DROP INDEX CONCURRENTLY IF EXISTS post_reactions_unique;
