-- pginfra: repeatable
-- The debounced materialized-view refresh queue. Writers ask for a refresh, cheaply and as
-- often as they like; the maintenance job refreshes each view at most once per its
-- min_interval, CONCURRENTLY when it can.
--   register_mv(mv, min_interval)      put a view under the queue (or change its interval)
--   unregister_mv(mv)                  take it off again (an app's revert file)
--   request_refresh(mv)                mark it wanted; never waits, idempotent
--   enqueue_mv_refresh()               trigger function: FOR EACH STATEMENT EXECUTE FUNCTION
--                                      monitoring.enqueue_mv_refresh('schema.mv', ...)
--   process_refresh_queue(force)       the job's call: refresh what is due, one row per view
-- The first four are SECURITY DEFINER, owned by monitoring_owner, so a role may enqueue
-- without write access to the tables; a trigger needs no grant at all to fire, calling
-- request_refresh() or register_mv() directly needs GRANT USAGE ON SCHEMA monitoring and
-- GRANT EXECUTE on the function. process_refresh_queue() is SECURITY INVOKER: the job runs it as
-- postgres (or as the owner of the views), best in autocommit: a plain REFRESH keeps its view
-- locked against readers until the calling transaction ends.
--
-- How no request is lost, and no writer ever waits: a requester takes a shared advisory lock on
-- the view (pg_try_advisory_xact_lock_shared, held until it commits). If a refresh of the view
-- is under way the processor holds that lock exclusively: the try fails, and the requester
-- leaves a row in mv_refresh_late_requests for the next run. Otherwise it sets requested_at
-- unless already set. Before refreshing a view the processor takes the exclusive lock, which
-- waits (lock_timeout 10s) until every transaction that requested it has committed, so their
-- changes are in the refresh; it clears requested_at only after a successful refresh, and only
-- a request made before the refresh started (requested_at <= the start time).
--
-- CREATE OR REPLACE keeps the functions and their grants; a change of parameters or columns
-- needs a DROP FUNCTION IF EXISTS of the old signature above it.
SET lock_timeout = '1s';
SET statement_timeout = '1min';

CREATE OR REPLACE FUNCTION monitoring.register_mv(
    mv regclass, min_interval interval DEFAULT interval '5 minutes')
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c
                   WHERE c.oid = register_mv.mv AND c.relkind = 'm') THEN
        RAISE EXCEPTION '% is not a materialized view', register_mv.mv
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF register_mv.min_interval IS NULL OR register_mv.min_interval < interval '0' THEN
        RAISE EXCEPTION 'min_interval must be a non-negative interval, not %',
            register_mv.min_interval USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO monitoring.mv_refresh_registry AS g (mv, min_interval)
    VALUES (register_mv.mv, register_mv.min_interval)
    ON CONFLICT (mv) DO UPDATE SET min_interval = EXCLUDED.min_interval;
END
$fn$;
COMMENT ON FUNCTION monitoring.register_mv(regclass, interval) IS
    'Put a materialized view under the debounced refresh queue, refreshed at most once per '
    'min_interval (registering again changes the interval). Does not request a refresh.';

CREATE OR REPLACE FUNCTION monitoring.unregister_mv(mv regclass)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
BEGIN
    DELETE FROM monitoring.mv_refresh_late_requests AS l WHERE l.mv = unregister_mv.mv;
    DELETE FROM monitoring.mv_refresh_registry AS g WHERE g.mv = unregister_mv.mv;
    RETURN FOUND;
END
$fn$;
COMMENT ON FUNCTION monitoring.unregister_mv(regclass) IS
    'Take a materialized view off the refresh queue (its log stays); true if it was on it. '
    'Views that are dropped are forgotten by the next process_refresh_queue() anyway.';

CREATE OR REPLACE FUNCTION monitoring.request_refresh(mv regclass)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM monitoring.mv_refresh_registry AS g
                   WHERE g.mv = request_refresh.mv) THEN
        RAISE EXCEPTION '% is not registered for refresh', request_refresh.mv
            USING ERRCODE = 'undefined_object',
                  HINT = 'Register it first: SELECT monitoring.register_mv(''schema.view'');';
    END IF;
    IF pg_catalog.pg_try_advisory_xact_lock_shared(pg_catalog.hashtext('monitoring.mv_refresh'),
                                                   request_refresh.mv::oid::int4) THEN
        -- No refresh of it is under way, and none will start before this transaction ends.
        IF EXISTS (SELECT 1 FROM monitoring.mv_refresh_registry AS g
                   WHERE g.mv = request_refresh.mv AND g.requested_at IS NOT NULL) THEN
            RETURN;  -- already requested: that request covers this transaction too
        END IF;
        -- Mark it, unless another transaction is marking it right now (then do not wait).
        UPDATE monitoring.mv_refresh_registry AS g
        SET requested_at = pg_catalog.clock_timestamp()
        WHERE g.mv = (SELECT x.mv FROM monitoring.mv_refresh_registry AS x
                      WHERE x.mv = request_refresh.mv AND x.requested_at IS NULL
                      FOR UPDATE SKIP LOCKED);
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    -- A refresh is under way (it may not see this transaction's changes) or the row is busy:
    -- leave a request for the next run. An INSERT never waits.
    INSERT INTO monitoring.mv_refresh_late_requests (mv) VALUES (request_refresh.mv);
END
$fn$;
COMMENT ON FUNCTION monitoring.request_refresh(regclass) IS
    'Ask for a refresh of a registered materialized view: cheap, idempotent, never waits. '
    'process_refresh_queue() does it once the view''s min_interval has passed.';

CREATE OR REPLACE FUNCTION monitoring.enqueue_mv_refresh()
RETURNS trigger
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    arg text;
    parts text[];
    target regclass;
BEGIN
    IF TG_LEVEL <> 'STATEMENT' THEN
        RAISE EXCEPTION 'monitoring.enqueue_mv_refresh() is for FOR EACH STATEMENT triggers '
                        '(trigger % on %.%)', TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    IF TG_NARGS = 0 THEN
        RAISE WARNING 'trigger % on %.% names no materialized view to refresh', TG_NAME,
            TG_TABLE_SCHEMA, TG_TABLE_NAME;
    END IF;
    FOREACH arg IN ARRAY coalesce(TG_ARGV, '{}'::text[]) LOOP
        -- an unqualified name is taken in the trigger's table's schema
        parts := pg_catalog.parse_ident(arg);
        IF cardinality(parts) = 1 THEN
            parts := ARRAY[TG_TABLE_SCHEMA::text] || parts;
        END IF;
        target := CASE WHEN cardinality(parts) = 2
                       THEN pg_catalog.to_regclass(format('%I.%I', parts[1], parts[2])) END;
        IF target IS NULL
           OR NOT EXISTS (SELECT 1 FROM monitoring.mv_refresh_registry AS g
                          WHERE g.mv = target) THEN
            -- a misconfigured trigger must not break the application's writes
            RAISE WARNING 'trigger % on %.%: % is not a registered materialized view; not '
                          'requesting a refresh', TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME, arg;
            CONTINUE;
        END IF;
        PERFORM monitoring.request_refresh(target);
    END LOOP;
    RETURN NULL;
END
$fn$;
COMMENT ON FUNCTION monitoring.enqueue_mv_refresh() IS
    'Trigger function for AFTER ... FOR EACH STATEMENT triggers: requests a refresh of each '
    'materialized view named in its arguments (schema-qualified, or in the table''s schema).';

CREATE OR REPLACE FUNCTION monitoring.process_refresh_queue(force boolean DEFAULT false)
RETURNS TABLE (mv regclass, status text, duration_ms numeric, "concurrently" boolean)
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
#variable_conflict use_column
DECLARE
    item record;
    started timestamptz;
    elapsed numeric;
    failure text;
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock(
            pg_catalog.hashtext('monitoring.process_refresh_queue'), 0) THEN
        RAISE NOTICE 'process_refresh_queue: another run is under way; nothing done';
        RETURN;
    END IF;
    -- views dropped since they were registered
    DELETE FROM monitoring.mv_refresh_late_requests AS l
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = l.mv);
    DELETE FROM monitoring.mv_refresh_registry AS g
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c
                      WHERE c.oid = g.mv AND c.relkind = 'm');

    FOR item IN
        SELECT g.mv,
               -- CONCURRENTLY needs a populated view and a unique index on plain columns,
               -- without a predicate
               c.relispopulated AND EXISTS (
                   SELECT 1 FROM pg_catalog.pg_index AS i
                   WHERE i.indrelid = g.mv AND i.indisunique AND i.indisvalid
                     AND i.indimmediate AND i.indexprs IS NULL AND i.indpred IS NULL)
                   AS use_concurrently
        FROM monitoring.mv_refresh_registry AS g
        JOIN pg_catalog.pg_class AS c ON c.oid = g.mv
        WHERE (g.requested_at IS NOT NULL
               OR EXISTS (SELECT 1 FROM monitoring.mv_refresh_late_requests AS l
                          WHERE l.mv = g.mv))
          AND (process_refresh_queue.force OR g.last_attempt_at IS NULL
               OR g.last_attempt_at + g.min_interval <= pg_catalog.now())
        -- a plain REFRESH locks out the view's readers until this run commits: do those last
        ORDER BY 2 DESC, g.requested_at NULLS LAST, g.mv
    LOOP
        started := pg_catalog.clock_timestamp();
        BEGIN
            -- wait until every transaction that requested this view has committed
            PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('monitoring.mv_refresh'),
                                                     item.mv::oid::int4);
            started := pg_catalog.clock_timestamp();
            -- late requests committed by now are covered by this refresh (restored on failure)
            DELETE FROM monitoring.mv_refresh_late_requests AS l WHERE l.mv = item.mv;
            IF item.use_concurrently THEN
                EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY %s', item.mv);
            ELSE
                EXECUTE format('REFRESH MATERIALIZED VIEW %s', item.mv);
            END IF;
            elapsed := round(extract(epoch FROM pg_catalog.clock_timestamp() - started) * 1000, 3);
            UPDATE monitoring.mv_refresh_registry AS g
            SET requested_at = CASE WHEN g.requested_at <= started THEN NULL
                                    ELSE g.requested_at END,
                last_attempt_at = started,
                last_refreshed_at = started,
                last_status = 'ok',
                last_duration_ms = elapsed,
                last_error = NULL
            WHERE g.mv = item.mv;
            INSERT INTO monitoring.mv_refresh_log
                (mv, started_at, duration_ms, "concurrently", status, error)
            VALUES (item.mv, started, elapsed, item.use_concurrently, 'ok', NULL);
            RETURN QUERY SELECT item.mv, 'ok'::text, elapsed, item.use_concurrently;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
            elapsed := round(extract(epoch FROM pg_catalog.clock_timestamp() - started) * 1000, 3);
            -- requested_at stays: the next run after min_interval tries again
            UPDATE monitoring.mv_refresh_registry AS g
            SET last_attempt_at = started,
                last_status = 'failed',
                last_duration_ms = elapsed,
                last_error = failure
            WHERE g.mv = item.mv;
            INSERT INTO monitoring.mv_refresh_log
                (mv, started_at, duration_ms, "concurrently", status, error)
            VALUES (item.mv, started, elapsed, item.use_concurrently, 'failed', failure);
            RAISE WARNING 'refresh of % failed: %', item.mv, failure;
            RETURN QUERY SELECT item.mv, 'failed'::text, elapsed, item.use_concurrently;
        END;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION monitoring.process_refresh_queue(boolean) IS
    'Refresh every requested materialized view whose last attempt is older than its '
    'min_interval (force: regardless of the interval), CONCURRENTLY when it is populated and has '
    'a unique index on plain columns, else plainly; each in its own subtransaction, so a failure '
    'is logged (mv_refresh_log, registry last_status/last_error) and the others go on. Returns '
    'one row per view attempted. Run it in autocommit; a second concurrent run does nothing.';

ALTER FUNCTION monitoring.register_mv(regclass, interval) OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.unregister_mv(regclass) OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.request_refresh(regclass) OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.enqueue_mv_refresh() OWNER TO monitoring_owner;
ALTER FUNCTION monitoring.process_refresh_queue(boolean) OWNER TO monitoring_owner;

REVOKE ALL ON FUNCTION monitoring.register_mv(regclass, interval),
    monitoring.unregister_mv(regclass), monitoring.request_refresh(regclass),
    monitoring.enqueue_mv_refresh(), monitoring.process_refresh_queue(boolean) FROM PUBLIC;
