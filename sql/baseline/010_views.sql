-- pginfra: repeatable
-- The baseline's monitoring views, in schema monitoring, owned by monitoring_owner, readable by
-- pg_monitor (and not by PUBLIC):
--   v_slow_queries, v_table_sizes, v_cache_hit_ratio, v_database_summary,
--   v_fk_without_index, v_unused_indexes, v_duplicate_indexes, v_invalid_indexes,
--   v_table_bloat, v_index_bloat,
--   v_long_running_sessions, v_idle_in_transaction, v_blocking_locks, v_wraparound.
-- Every view is security_invoker: it shows its reader what the reader may see anyway, and lends
-- the reader none of its owner's rights. A pg_monitor member sees every session's query and
-- every pg_stat_statements row (pg_monitor includes pg_read_all_stats). The bloat views read
-- pg_stats, which shows a column's statistics only to whoever may SELECT that column: for a
-- pg_monitor member without SELECT on the tables they report is_na = true and no estimate; the
-- maintenance job, running as postgres, sees them all.
-- Re-run whenever this file changes: CREATE OR REPLACE keeps the views and their grants. A view
-- whose columns change other than by appending needs a DROP VIEW IF EXISTS above it.
SET lock_timeout = '1s';
SET statement_timeout = '1min';

CREATE OR REPLACE VIEW monitoring.v_slow_queries WITH (security_invoker = true) AS
SELECT s.userid::regrole::text AS role_name,
       d.datname AS database_name,
       s.queryid,
       s.query,
       s.calls,
       round(s.total_exec_time::numeric, 3) AS total_ms,
       round(s.mean_exec_time::numeric, 3) AS mean_ms,
       round(s.max_exec_time::numeric, 3) AS max_ms,
       s.rows,
       s.shared_blks_hit,
       s.shared_blks_read,
       round(100.0 * s.shared_blks_hit / nullif(s.shared_blks_hit + s.shared_blks_read, 0), 2)
           AS hit_pct
FROM public.pg_stat_statements AS s
LEFT JOIN pg_catalog.pg_database AS d ON d.oid = s.dbid
ORDER BY s.total_exec_time DESC;
COMMENT ON VIEW monitoring.v_slow_queries IS
    'Statements by total execution time (pg_stat_statements, every database of the cluster): '
    'calls, total/mean/max ms, rows, shared blocks hit/read and hit %.';

CREATE OR REPLACE VIEW monitoring.v_table_sizes WITH (security_invoker = true) AS
SELECT n.nspname AS schema_name,
       c.relname AS table_name,
       c.relkind,
       pg_catalog.pg_total_relation_size(c.oid) AS total_bytes,
       pg_catalog.pg_table_size(c.oid) - coalesce(pg_catalog.pg_total_relation_size(
           nullif(c.reltoastrelid, 0)), 0) AS table_bytes,
       pg_catalog.pg_indexes_size(c.oid) AS index_bytes,
       coalesce(pg_catalog.pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast_bytes,
       pg_catalog.pg_size_pretty(pg_catalog.pg_total_relation_size(c.oid)) AS total_size,
       pg_catalog.pg_size_pretty(pg_catalog.pg_table_size(c.oid) - coalesce(
           pg_catalog.pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)) AS table_size,
       pg_catalog.pg_size_pretty(pg_catalog.pg_indexes_size(c.oid)) AS index_size,
       pg_catalog.pg_size_pretty(coalesce(pg_catalog.pg_total_relation_size(
           nullif(c.reltoastrelid, 0)), 0)) AS toast_size,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END AS estimated_rows
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
ORDER BY pg_catalog.pg_total_relation_size(c.oid) DESC;
COMMENT ON VIEW monitoring.v_table_sizes IS
    'Tables and materialized views by total size: total = table (heap, free space and '
    'visibility maps) + indexes + TOAST, in bytes and pretty; estimated_rows from reltuples '
    '(NULL before the first VACUUM or ANALYZE).';

CREATE OR REPLACE VIEW monitoring.v_cache_hit_ratio WITH (security_invoker = true) AS
WITH heap AS (
    SELECT coalesce(sum(t.heap_blks_hit), 0) AS hit, coalesce(sum(t.heap_blks_read), 0) AS read
    FROM pg_catalog.pg_statio_user_tables AS t
), idx AS (
    SELECT coalesce(sum(i.idx_blks_hit), 0) AS hit, coalesce(sum(i.idx_blks_read), 0) AS read
    FROM pg_catalog.pg_statio_user_indexes AS i
)
SELECT heap.hit AS heap_blks_hit,
       heap.read AS heap_blks_read,
       round(heap.hit / nullif(heap.hit + heap.read, 0), 4) AS heap_hit_ratio,
       idx.hit AS idx_blks_hit,
       idx.read AS idx_blks_read,
       round(idx.hit / nullif(idx.hit + idx.read, 0), 4) AS index_hit_ratio,
       d.blks_hit AS database_blks_hit,
       d.blks_read AS database_blks_read,
       round(d.blks_hit::numeric / nullif(d.blks_hit + d.blks_read, 0), 4) AS database_hit_ratio,
       d.stats_reset
FROM heap, idx, pg_catalog.pg_stat_database AS d
WHERE d.datname = pg_catalog.current_database();
COMMENT ON VIEW monitoring.v_cache_hit_ratio IS
    'Shared-buffer hit ratios (0..1) of the current database since its statistics were reset: '
    'user tables (heap), user indexes, and the whole database. NULL before any block was read.';

CREATE OR REPLACE VIEW monitoring.v_database_summary WITH (security_invoker = true) AS
WITH conn AS (
    SELECT count(*) AS used, current_setting('max_connections')::int AS max
    FROM pg_catalog.pg_stat_activity AS a
    WHERE a.backend_type = 'client backend'
), db AS (
    SELECT d.blks_hit, d.blks_read
    FROM pg_catalog.pg_stat_database AS d
    WHERE d.datname = pg_catalog.current_database()
)
SELECT pg_catalog.current_database() AS database_name,
       pg_catalog.pg_database_size(pg_catalog.current_database()) AS size_bytes,
       pg_catalog.pg_size_pretty(pg_catalog.pg_database_size(pg_catalog.current_database()))
           AS size,
       (SELECT count(*) FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname !~ '^pg_toast') AS tables,
       (SELECT count(*) FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('i', 'I') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname !~ '^pg_toast') AS indexes,
       (SELECT count(*) FROM pg_catalog.pg_constraint AS k
        JOIN pg_catalog.pg_namespace AS n ON n.oid = k.connamespace
        WHERE k.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema'))
           AS foreign_keys,
       conn.used AS connections,
       conn.max AS max_connections,
       round(100.0 * conn.used / conn.max, 1) AS connections_pct,
       round(100.0 * db.blks_hit / nullif(db.blks_hit + db.blks_read, 0), 2) AS cache_hit_pct
FROM conn, db;
COMMENT ON VIEW monitoring.v_database_summary IS
    'One row: the current database''s size, its tables, indexes and foreign keys, the '
    'cluster''s client connections against max_connections, and the database''s cache hit %.';

-- FK lookups (ON DELETE/UPDATE of the referenced row, and most joins) want a btree index whose
-- leading key columns are the FK's columns, in any order. fix is the statement that adds one,
-- named <table>_<columns>_idx, or, when that would pass 63 bytes or the name is taken by
-- anything but an INVALID index for the same FK (which the migration runner rebuilds), a
-- shortened name with a hash.
CREATE OR REPLACE VIEW monitoring.v_fk_without_index WITH (security_invoker = true) AS
WITH fk AS (
    SELECT k.oid, k.conname, k.conrelid, k.confrelid, k.conkey, c.relnamespace, n.nspname,
           c.relname,
           (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY u.ord)
            FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
            JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = u.attnum)
               AS cols,
           c.relname || '_' || (SELECT string_agg(a.attname, '_' ORDER BY u.ord)
            FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
            JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = u.attnum)
               AS base
    FROM pg_catalog.pg_constraint AS k
    JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE k.contype = 'f'
      AND c.relkind = 'r'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      -- a FK to a partitioned table is repeated for each of its partitions: keep the parent's
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS p
                      WHERE p.oid = k.conparentid AND p.conrelid = k.conrelid)
      AND NOT EXISTS (
          SELECT 1
          FROM pg_catalog.pg_index AS i
          JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
          JOIN pg_catalog.pg_am AS am ON am.oid = ic.relam
          WHERE i.indrelid = k.conrelid
            AND i.indisvalid
            AND i.indpred IS NULL
            AND am.amname = 'btree'
            AND i.indnkeyatts >= cardinality(k.conkey)
            AND (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(k.conkey)]
                @> k.conkey
            AND (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(k.conkey)]
                <@ k.conkey)
), named AS (
    SELECT fk.*,
           CASE WHEN octet_length(fk.base || '_idx') <= 63
                 AND NOT EXISTS (
                     SELECT 1 FROM pg_catalog.pg_class AS x
                     LEFT JOIN pg_catalog.pg_index AS xi ON xi.indexrelid = x.oid
                     WHERE x.relnamespace = fk.relnamespace
                       AND x.relname = fk.base || '_idx'
                       AND NOT (xi.indrelid IS NOT DISTINCT FROM fk.conrelid
                                AND NOT coalesce(xi.indisvalid, true)))
                THEN fk.base || '_idx'
                ELSE (SELECT left(fk.base, w)
                      FROM generate_series(char_length(fk.base), 0, -1) AS w
                      WHERE octet_length(left(fk.base, w)) <= 52
                      ORDER BY w DESC LIMIT 1)
                     || '_' || left(md5(fk.nspname || '.' || fk.base), 6) || '_idx'
           END AS index_name
    FROM fk
)
SELECT named.nspname AS schema_name,
       named.relname AS table_name,
       named.conname AS constraint_name,
       named.cols AS columns,
       named.confrelid::regclass::text AS referenced_table,
       format('CREATE INDEX CONCURRENTLY IF NOT EXISTS %I ON %I.%I (%s);',
              named.index_name, named.nspname, named.relname, named.cols) AS fix
FROM named
ORDER BY named.nspname, named.relname, named.conname;
COMMENT ON VIEW monitoring.v_fk_without_index IS
    'Foreign keys whose columns are not the leading key columns of any valid, non-partial btree '
    'index on the referencing table; fix is the CREATE INDEX CONCURRENTLY statement that adds '
    'one (run it outside a transaction). Partitions are listed one by one.';

CREATE OR REPLACE VIEW monitoring.v_unused_indexes WITH (security_invoker = true) AS
SELECT s.schemaname AS schema_name,
       s.relname AS table_name,
       s.indexrelname AS index_name,
       pg_catalog.pg_relation_size(s.indexrelid) AS index_bytes,
       pg_catalog.pg_size_pretty(pg_catalog.pg_relation_size(s.indexrelid)) AS index_size,
       s.idx_scan,
       d.stats_reset AS counted_since,
       pg_catalog.pg_get_indexdef(s.indexrelid) AS definition
FROM pg_catalog.pg_stat_user_indexes AS s
JOIN pg_catalog.pg_index AS i ON i.indexrelid = s.indexrelid
LEFT JOIN pg_catalog.pg_stat_database AS d ON d.datname = pg_catalog.current_database()
WHERE s.idx_scan = 0
  AND NOT i.indisunique
  AND NOT i.indisprimary
  AND NOT i.indisreplident
  AND i.indisvalid
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS k WHERE k.conindid = s.indexrelid)
ORDER BY pg_catalog.pg_relation_size(s.indexrelid) DESC, 1, 2, 3;
COMMENT ON VIEW monitoring.v_unused_indexes IS
    'Valid indexes never scanned since the statistics were reset (counted_since, NULL: since '
    'the cluster was created) that enforce nothing: not unique, not primary, not the replica '
    'identity, backing no constraint. Scans on standbys are counted there, not here.';

CREATE OR REPLACE VIEW monitoring.v_duplicate_indexes WITH (security_invoker = true) AS
WITH idx AS (
    SELECT i.indexrelid, i.indrelid, c.relname AS index_name,
           pg_catalog.pg_relation_size(i.indexrelid) AS bytes,
           -- the one to keep: the primary key, else a unique or constraint index, else the oldest
           row_number() OVER (
               PARTITION BY i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text,
                            pg_catalog.pg_get_expr(i.indexprs, i.indrelid),
                            pg_catalog.pg_get_expr(i.indpred, i.indrelid)
               ORDER BY i.indisprimary DESC, i.indisunique DESC,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS k
                                WHERE k.conindid = i.indexrelid) DESC,
                        i.indexrelid) AS rank,
           count(*) OVER (
               PARTITION BY i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text,
                            pg_catalog.pg_get_expr(i.indexprs, i.indrelid),
                            pg_catalog.pg_get_expr(i.indpred, i.indrelid)) AS copies,
           first_value(i.indexrelid) OVER (
               PARTITION BY i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text,
                            pg_catalog.pg_get_expr(i.indexprs, i.indrelid),
                            pg_catalog.pg_get_expr(i.indpred, i.indrelid)
               ORDER BY i.indisprimary DESC, i.indisunique DESC,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS k
                                WHERE k.conindid = i.indexrelid) DESC,
                        i.indexrelid) AS keep_oid
    FROM pg_catalog.pg_index AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE i.indisvalid
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_toast'
)
SELECT n.nspname AS schema_name,
       t.relname AS table_name,
       keep.relname AS keep_index,
       array_agg(idx.index_name ORDER BY idx.rank) AS duplicate_indexes,
       sum(idx.bytes) AS duplicate_bytes,
       pg_catalog.pg_size_pretty(sum(idx.bytes)) AS duplicate_size,
       pg_catalog.pg_get_indexdef(idx.keep_oid) AS definition
FROM idx
JOIN pg_catalog.pg_class AS t ON t.oid = idx.indrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = t.relnamespace
JOIN pg_catalog.pg_class AS keep ON keep.oid = idx.keep_oid
WHERE idx.copies > 1 AND idx.rank > 1
GROUP BY n.nspname, t.relname, keep.relname, idx.keep_oid
ORDER BY sum(idx.bytes) DESC, 1, 2, 3;
COMMENT ON VIEW monitoring.v_duplicate_indexes IS
    'Valid indexes identical to another on the same table (same columns, operator classes, '
    'collations, expressions and predicate): keep_index is the one to keep (primary, unique, '
    'constraint, else the oldest), duplicate_indexes the ones that could go.';

CREATE OR REPLACE VIEW monitoring.v_invalid_indexes WITH (security_invoker = true) AS
SELECT n.nspname AS schema_name,
       t.relname AS table_name,
       c.relname AS index_name,
       pg_catalog.pg_relation_size(c.oid) AS index_bytes,
       EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_create_index AS p
               WHERE p.index_relid = c.oid) AS build_in_progress,
       pg_catalog.pg_get_indexdef(c.oid) AS definition,
       CASE WHEN c.relkind = 'i'
            THEN format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I;', n.nspname, c.relname)
       END AS fix
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid
ORDER BY 1, 2, 3;
COMMENT ON VIEW monitoring.v_invalid_indexes IS
    'INVALID indexes: a failed (or, with build_in_progress, a running) CREATE INDEX or REINDEX '
    'CONCURRENTLY, or a partitioned index with partitions still missing theirs (fix NULL). They '
    'cost every write and serve no read: drop with fix, then build again (the migration runner '
    'does both for its own CONCURRENTLY statements).';

-- Bloat, estimated the way of ioguix/pgsql-bloat-estimation: the size the rows would take
-- (pg_stats avg_width and null_frac, a 23-byte tuple header plus null bitmap, 4-byte line
-- pointers, 24-byte page headers, MAXALIGN padding, fillfactor) against the actual pages.
-- Needs a recent ANALYZE; is_na marks estimates not to trust (missing statistics, or a column
-- of type name, whose statistics are wrong).
CREATE OR REPLACE VIEW monitoring.v_table_bloat WITH (security_invoker = true) AS
WITH const AS (
    SELECT current_setting('block_size')::numeric AS bs,
           CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64|arm64'
                THEN 8 ELSE 4 END AS ma
), cols AS (
    SELECT c.oid, n.nspname, c.relname, c.reltuples::numeric AS reltuples, c.relpages,
           coalesce(toast.relpages, 0) AS toast_pages,
           coalesce(nullif(toast.reltuples, -1), 0)::numeric AS toast_tuples,
           coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int,
                    100) AS fillfactor,
           count(*) AS columns,
           count(s.attname) AS columns_with_stats,
           max(coalesce(s.null_frac, 0)) AS max_null_frac,
           sum((1 - coalesce(s.null_frac, 0)::numeric) * coalesce(s.avg_width, 1024))
               AS data_width,
           bool_or(a.atttypid = 'pg_catalog.name'::regtype) AS has_name_column
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
                                      AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_class AS toast ON toast.oid = c.reltoastrelid
    LEFT JOIN pg_catalog.pg_stats AS s ON s.schemaname = n.nspname AND s.tablename = c.relname
                                       AND s.attname = a.attname AND NOT s.inherited
    WHERE c.relkind IN ('r', 'm')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_toast'
    GROUP BY c.oid, n.nspname, toast.relpages, toast.reltuples
), est AS (
    SELECT cols.*, const.bs,
           cols.relpages + cols.toast_pages AS pages,
           -- line pointer + aligned header (with null bitmap) + aligned data
           4 + const.ma * ceil((23 + CASE WHEN cols.max_null_frac > 0
                                          THEN (7 + cols.columns) / 8 ELSE 0 END)
                               / const.ma::numeric)
             + const.ma * ceil(cols.data_width / const.ma) AS tuple_bytes,
           cols.columns_with_stats = 0 OR cols.reltuples < 0 AS unknown
    FROM cols, const
), pages AS (
    SELECT est.*,
           CASE WHEN NOT est.unknown THEN
               ceil(est.reltuples / ((est.bs - 24) * est.fillfactor / (est.tuple_bytes * 100)))
               + ceil(est.toast_tuples / 4)
           END AS expected_pages
    FROM est
), waste AS (
    SELECT pages.*,
           CASE WHEN pages.expected_pages IS NOT NULL
                THEN greatest(pages.pages - pages.expected_pages, 0) END AS bloat_pages
    FROM pages
)
SELECT waste.nspname AS schema_name,
       waste.relname AS table_name,
       (waste.bs * waste.pages)::bigint AS real_bytes,
       (waste.bs * waste.expected_pages)::bigint AS expected_bytes,
       (waste.bs * waste.bloat_pages)::bigint AS bloat_bytes,
       pg_catalog.pg_size_pretty(waste.bs * waste.bloat_pages) AS bloat_size,
       round(waste.bloat_pages / nullif(waste.pages, 0), 3) AS bloat_ratio,
       waste.fillfactor,
       waste.unknown OR waste.has_name_column OR waste.columns_with_stats < waste.columns
           AS is_na
FROM waste
ORDER BY bloat_bytes DESC NULLS LAST, 1, 2;
COMMENT ON VIEW monitoring.v_table_bloat IS
    'Estimated table bloat (ioguix method, from pg_stats; run ANALYZE first): real and expected '
    'size with the fillfactor''s free space, the estimated waste in bytes and as a ratio (0..1). '
    'is_na: do not trust this row (statistics missing or not visible to the reader).';

CREATE OR REPLACE VIEW monitoring.v_index_bloat WITH (security_invoker = true) AS
WITH const AS (
    SELECT current_setting('block_size')::numeric AS bs,
           CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64|arm64'
                THEN 8 ELSE 4 END AS ma
), idx AS (
    SELECT i.indexrelid, i.indrelid, n.nspname, t.relname AS table_name,
           c.relname AS index_name, c.reltuples::numeric AS reltuples, c.relpages,
           i.indnatts,
           string_to_array(i.indkey::text, ' ')::int2[] AS keys,
           coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int,
                    90) AS fillfactor
    FROM pg_catalog.pg_index AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
    JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_am AS am ON am.oid = c.relam
    WHERE am.amname = 'btree'
      AND c.relkind = 'i'
      AND c.relpages > 0
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_toast'
), cols AS (
    -- each index column: a table column, or an expression whose statistics ANALYZE keeps
    -- under the index's own name
    SELECT idx.indexrelid, pos.n,
           coalesce(ta.attname, ia.attname) AS attname,
           coalesce(ta.atttypid, ia.atttypid) AS atttypid,
           CASE WHEN idx.keys[pos.n] = 0 THEN idx.index_name ELSE idx.table_name END AS stats_rel
    FROM idx
    CROSS JOIN LATERAL generate_series(1, idx.indnatts) AS pos(n)
    LEFT JOIN pg_catalog.pg_attribute AS ta ON idx.keys[pos.n] <> 0
                                           AND ta.attrelid = idx.indrelid
                                           AND ta.attnum = idx.keys[pos.n]
    LEFT JOIN pg_catalog.pg_attribute AS ia ON idx.keys[pos.n] = 0
                                           AND ia.attrelid = idx.indexrelid
                                           AND ia.attnum = pos.n
), widths AS (
    SELECT idx.indexrelid,
           count(*) AS columns,
           count(s.attname) AS columns_with_stats,
           max(coalesce(s.null_frac, 0)) AS max_null_frac,
           sum((1 - coalesce(s.null_frac, 0)::numeric) * coalesce(s.avg_width, 1024))
               AS data_width,
           bool_or(cols.atttypid = 'pg_catalog.name'::regtype) AS has_name_column
    FROM idx
    JOIN cols ON cols.indexrelid = idx.indexrelid
    LEFT JOIN pg_catalog.pg_stats AS s ON s.schemaname = idx.nspname
                                       AND s.tablename = cols.stats_rel
                                       AND s.attname = cols.attname
    GROUP BY idx.indexrelid
), est AS (
    SELECT idx.*, widths.columns, widths.columns_with_stats, widths.has_name_column, const.bs,
           -- line pointer + aligned IndexTupleData (8 bytes, 4 more for a null bitmap) + data
           4 + const.ma * ceil((8 + CASE WHEN widths.max_null_frac > 0 THEN 4 ELSE 0 END)
                               / const.ma::numeric)
             + const.ma * ceil(widths.data_width / const.ma) AS tuple_bytes,
           widths.columns_with_stats = 0 OR idx.reltuples < 0 AS unknown
    FROM idx
    JOIN widths ON widths.indexrelid = idx.indexrelid
    CROSS JOIN const
), pages AS (
    SELECT est.*,
           -- the metapage, plus leaf pages (24-byte header, 16-byte btree special space)
           CASE WHEN NOT est.unknown THEN
               1 + ceil(est.reltuples
                        / floor((est.bs - 24 - 16) * est.fillfactor / (100 * est.tuple_bytes)))
           END AS expected_pages
    FROM est
), waste AS (
    SELECT pages.*,
           CASE WHEN pages.expected_pages IS NOT NULL
                THEN greatest(pages.relpages - pages.expected_pages, 0) END AS bloat_pages
    FROM pages
)
SELECT waste.nspname AS schema_name,
       waste.table_name,
       waste.index_name,
       (waste.bs * waste.relpages)::bigint AS real_bytes,
       (waste.bs * waste.expected_pages)::bigint AS expected_bytes,
       (waste.bs * waste.bloat_pages)::bigint AS bloat_bytes,
       pg_catalog.pg_size_pretty(waste.bs * waste.bloat_pages) AS bloat_size,
       round(waste.bloat_pages / waste.relpages, 3) AS bloat_ratio,
       waste.fillfactor,
       waste.unknown OR waste.has_name_column OR waste.columns_with_stats < waste.columns
           AS is_na
FROM waste
ORDER BY bloat_bytes DESC NULLS LAST, 1, 2, 3;
COMMENT ON VIEW monitoring.v_index_bloat IS
    'Estimated btree index bloat (ioguix method, from pg_stats; run ANALYZE first): real and '
    'expected size at the index''s fillfactor, the estimated waste in bytes and as a ratio '
    '(0..1). Deduplicated indexes may be smaller than expected (waste 0). is_na: do not trust.';

CREATE OR REPLACE VIEW monitoring.v_long_running_sessions WITH (security_invoker = true) AS
SELECT a.pid,
       a.usename AS role_name,
       a.datname AS database_name,
       a.application_name,
       a.client_addr,
       a.backend_type,
       a.wait_event_type,
       a.wait_event,
       a.query_start,
       now() - a.query_start AS query_duration,
       round(extract(epoch FROM now() - a.query_start), 1) AS query_seconds,
       a.xact_start,
       now() - a.xact_start AS xact_duration,
       a.query
FROM pg_catalog.pg_stat_activity AS a
WHERE a.state = 'active'
  AND a.backend_type IN ('client backend', 'autovacuum worker')
  AND a.pid <> pg_catalog.pg_backend_pid()
ORDER BY a.query_start;
COMMENT ON VIEW monitoring.v_long_running_sessions IS
    'Statements running now (client backends and autovacuum workers, not this session), the '
    'longest-running first, with how long the statement and its transaction have run. '
    'monitoring.health() applies the thresholds.';

CREATE OR REPLACE VIEW monitoring.v_idle_in_transaction WITH (security_invoker = true) AS
SELECT a.pid,
       a.usename AS role_name,
       a.datname AS database_name,
       a.application_name,
       a.client_addr,
       a.state,
       a.xact_start,
       now() - a.xact_start AS xact_duration,
       a.state_change,
       now() - a.state_change AS state_duration,
       round(extract(epoch FROM now() - a.state_change), 1) AS state_seconds,
       a.backend_xid,
       a.backend_xmin,
       a.query AS last_query
FROM pg_catalog.pg_stat_activity AS a
WHERE a.state IN ('idle in transaction', 'idle in transaction (aborted)')
ORDER BY a.state_change;
COMMENT ON VIEW monitoring.v_idle_in_transaction IS
    'Sessions idle inside an open transaction (holding their locks and snapshot), the longest '
    'idle first: state_duration is how long they have been idle, xact_duration how long the '
    'transaction has been open.';

CREATE OR REPLACE VIEW monitoring.v_blocking_locks WITH (security_invoker = true) AS
SELECT w.pid AS blocked_pid,
       w.usename AS blocked_role,
       w.datname AS database_name,
       w.query AS blocked_query,
       w.wait_event AS lock_type,
       coalesce(ls.wait_start, w.state_change) AS wait_start,
       now() - coalesce(ls.wait_start, w.state_change) AS wait_duration,
       round(extract(epoch FROM now() - coalesce(ls.wait_start, w.state_change)), 1)
           AS wait_seconds,
       b.pid AS blocking_pid,
       h.usename AS blocking_role,
       h.state AS blocking_state,
       h.query AS blocking_query,
       h.xact_start AS blocking_xact_start
FROM pg_catalog.pg_stat_activity AS w
CROSS JOIN LATERAL unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
LEFT JOIN pg_catalog.pg_stat_activity AS h ON h.pid = b.pid
LEFT JOIN LATERAL (SELECT min(l.waitstart) AS wait_start FROM pg_catalog.pg_locks AS l
                   WHERE l.pid = w.pid AND NOT l.granted) AS ls ON true
WHERE w.wait_event_type = 'Lock'
ORDER BY wait_duration DESC, w.pid, b.pid;
COMMENT ON VIEW monitoring.v_blocking_locks IS
    'Sessions waiting for a lock, one row per session blocking them (pg_blocking_pids): who '
    'waits, on what query, since when, and who holds it up with which query. blocking_pid 0 is '
    'a prepared transaction.';

CREATE OR REPLACE VIEW monitoring.v_wraparound WITH (security_invoker = true) AS
WITH const AS (
    SELECT current_setting('autovacuum_freeze_max_age')::numeric AS freeze_max_age,
           2147483648::numeric AS wrap
), ages AS (
    SELECT 'database' AS scope, d.datname AS database_name, NULL::name AS schema_name,
           NULL::name AS relation_name, age(d.datfrozenxid) AS xid_age,
           mxid_age(d.datminmxid) AS mxid_age
    FROM pg_catalog.pg_database AS d
    UNION ALL
    SELECT 'table', pg_catalog.current_database(), n.nspname, c.relname,
           greatest(age(c.relfrozenxid), coalesce(age(t.relfrozenxid), 0)),
           greatest(mxid_age(c.relminmxid), coalesce(mxid_age(t.relminmxid), 0))
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_class AS t ON t.oid = c.reltoastrelid
    WHERE c.relkind IN ('r', 'm')
)
SELECT ages.scope,
       ages.database_name,
       ages.schema_name,
       ages.relation_name,
       ages.xid_age,
       round(100 * ages.xid_age / const.freeze_max_age, 1) AS pct_of_freeze_max_age,
       round(100 * ages.xid_age / const.wrap, 2) AS pct_of_wraparound,
       ages.mxid_age
FROM ages, const
ORDER BY ages.xid_age DESC, 1, 2, 3, 4;
COMMENT ON VIEW monitoring.v_wraparound IS
    'Transaction ID age of every database (age(datfrozenxid)) and of every table of this one '
    '(its own or its TOAST table''s relfrozenxid, the older): as % of autovacuum_freeze_max_age '
    '(100: anti-wraparound vacuums start) and of the 2^31 wraparound limit; multixact age too.';

ALTER VIEW monitoring.v_slow_queries OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_table_sizes OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_cache_hit_ratio OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_database_summary OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_fk_without_index OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_unused_indexes OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_duplicate_indexes OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_invalid_indexes OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_table_bloat OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_index_bloat OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_long_running_sessions OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_idle_in_transaction OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_blocking_locks OWNER TO monitoring_owner;
ALTER VIEW monitoring.v_wraparound OWNER TO monitoring_owner;

REVOKE ALL ON monitoring.v_slow_queries, monitoring.v_table_sizes, monitoring.v_cache_hit_ratio,
    monitoring.v_database_summary, monitoring.v_fk_without_index, monitoring.v_unused_indexes,
    monitoring.v_duplicate_indexes, monitoring.v_invalid_indexes, monitoring.v_table_bloat,
    monitoring.v_index_bloat, monitoring.v_long_running_sessions,
    monitoring.v_idle_in_transaction, monitoring.v_blocking_locks, monitoring.v_wraparound
    FROM PUBLIC;
GRANT SELECT ON monitoring.v_slow_queries, monitoring.v_table_sizes, monitoring.v_cache_hit_ratio,
    monitoring.v_database_summary, monitoring.v_fk_without_index, monitoring.v_unused_indexes,
    monitoring.v_duplicate_indexes, monitoring.v_invalid_indexes, monitoring.v_table_bloat,
    monitoring.v_index_bloat, monitoring.v_long_running_sessions,
    monitoring.v_idle_in_transaction, monitoring.v_blocking_locks, monitoring.v_wraparound
    TO pg_monitor;
