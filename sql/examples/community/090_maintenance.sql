-- pginfra: repeatable
-- The guide's weekly maintenance of the community tables. ANALYZE runs here, for the tables
-- whose changes since their last analyze pass a share of their rows. VACUUM cannot run inside a
-- function, so the tables that need one are returned with the statement, as the baseline's
-- monitoring.vacuum_candidates() does for the maintenance job that runs them.
SET lock_timeout = '1s';
SET statement_timeout = '30min';

CREATE OR REPLACE FUNCTION public.maintain_community_tables(
    min_changed_ratio float8 DEFAULT 0.1, min_dead_ratio float8 DEFAULT 0.1)
RETURNS TABLE (table_name text, action text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT st.relid, st.relname, st.n_live_tup, st.n_dead_tup, st.n_mod_since_analyze
        FROM pg_stat_user_tables AS st
        WHERE st.schemaname = 'public'
          AND st.relname IN ('users', 'posts', 'post_reactions', 'user_community_stats')
        ORDER BY st.relname
    LOOP
        IF t.n_mod_since_analyze > min_changed_ratio * greatest(t.n_live_tup, 1) THEN
            EXECUTE format('ANALYZE %s', t.relid::regclass);
            table_name := t.relname;
            action := 'analyzed';
            detail := t.n_mod_since_analyze || ' rows changed since the last analyze';
            RETURN NEXT;
        END IF;
        IF t.n_dead_tup > min_dead_ratio * greatest(t.n_live_tup + t.n_dead_tup, 1) THEN
            table_name := t.relname;
            action := 'needs vacuum';
            detail := format('VACUUM (ANALYZE) %s; -- %s dead of %s rows', t.relid::regclass,
                             t.n_dead_tup, t.n_live_tup + t.n_dead_tup);
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION public.maintain_community_tables(float8, float8) IS
    'Analyze changed community tables; list those needing VACUUM (community example).';
REVOKE ALL ON FUNCTION public.maintain_community_tables(float8, float8) FROM PUBLIC;
