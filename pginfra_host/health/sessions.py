"""The checks of client sessions, from pg_stat_activity and pg_locks: connections (% of
max_connections), long_running (the oldest active statement), idle_in_transaction and
blocking_locks (who waits for whom, on what). Query texts are never shown (they may hold
passwords): sessions are named by pid, user@database, application_name and durations.
"""

from __future__ import annotations

from pginfra_host.health.context import Context
from pginfra_host.health.db import connect, query, settings
from pginfra_host.health.result import (
    LIST_AT_MOST,
    OK,
    clean,
    grade,
    more,
    result,
    rounded,
    seconds_text,
)


def who(row: dict) -> str:
    """``user@database`` of a pg_stat_activity row, printable."""
    user = row.get("usename") or row.get("backend_type") or "?"
    return f"{clean(user)}@{clean(row.get('datname') or '-')}"


def session_data(row: dict, seconds_key: str = "seconds") -> dict:
    """A session as the checks' data report it (never its query text)."""
    return {"pid": row["pid"], "user": row.get("usename"), "database": row.get("datname"),
            "application_name": clean(row.get("application_name")),
            "seconds": rounded(row.get(seconds_key))}


def check_connections(ctx: Context) -> dict:
    """Client backends in % of max_connections (connections_percent)."""
    if ctx.conn is None:
        return ctx.not_answering("connections")
    pair = ctx.th["connections_percent"]
    rows = query(ctx.conn, """
        SELECT coalesce(state, 'unknown') AS state, count(*)::int AS n
        FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'
        GROUP BY 1 ORDER BY 2 DESC, 1""")
    limits = settings(ctx.conn, "max_connections", "superuser_reserved_connections")
    max_connections = int(limits["max_connections"])
    reserved = int(limits["superuser_reserved_connections"])
    by_state = {r["state"]: r["n"] for r in rows}
    total = sum(by_state.values())
    value = 100.0 * total / max_connections
    states = ", ".join(f"{n} {state}" for state, n in by_state.items())
    return result("connections", grade(value, pair),
                  f"{total} of max_connections {max_connections} in use ({reserved} "
                  f"reserved for superusers){': ' + states if states else ''}",
                  value, "%", pair, {"clients": total, "max_connections": max_connections,
                                     "superuser_reserved_connections": reserved,
                                     "by_state": by_state})


def check_long_running(ctx: Context) -> dict:
    """The oldest active statement of another session, in seconds
    (long_running_seconds)."""
    if ctx.conn is None:
        return ctx.not_answering("long_running")
    pair = ctx.th["long_running_seconds"]
    rows = query(ctx.conn, """
        SELECT pid, usename, datname, application_name, backend_type,
               wait_event_type, wait_event,
               extract(epoch FROM clock_timestamp() - query_start)::float8 AS seconds
        FROM pg_catalog.pg_stat_activity
        WHERE backend_type = 'client backend' AND state = 'active'
          AND pid <> pg_catalog.pg_backend_pid() AND query_start IS NOT NULL
        ORDER BY query_start""")
    if not rows:
        return result("long_running", OK, "no other statement is running", 0, "s", pair,
                      {"active": 0, "sessions": []})
    oldest = rows[0]
    value = max(0.0, oldest["seconds"])
    waiting = (f", waiting on {oldest['wait_event_type']}:{oldest['wait_event']}"
               if oldest["wait_event_type"] else "")
    app = clean(oldest["application_name"])
    detail = (f"{len(rows)} statement(s) running; the oldest: pid {oldest['pid']} "
              f"({who(oldest)}{', ' + app if app else ''}) for {seconds_text(value)}"
              f"{waiting}")
    return result("long_running", grade(value, pair), detail, value, "s", pair,
                  {"active": len(rows), "sessions": [session_data(r) for r in rows[:10]]})


def check_idle_in_transaction(ctx: Context) -> dict:
    """The oldest session idle in a transaction (aborted or not), in seconds
    (idle_in_transaction_seconds)."""
    if ctx.conn is None:
        return ctx.not_answering("idle_in_transaction")
    pair = ctx.th["idle_in_transaction_seconds"]
    rows = query(ctx.conn, """
        SELECT pid, usename, datname, application_name, state,
               extract(epoch FROM clock_timestamp() - state_change)::float8 AS seconds,
               extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_seconds
        FROM pg_catalog.pg_stat_activity
        WHERE backend_type = 'client backend'
          AND state IN ('idle in transaction', 'idle in transaction (aborted)')
        ORDER BY state_change""")
    if not rows:
        return result("idle_in_transaction", OK, "no session is idle in a transaction", 0,
                      "s", pair, {"count": 0, "sessions": []})
    sessions = []
    for r in rows:
        app = clean(r["application_name"])
        aborted = " (aborted)" if r["state"].endswith("(aborted)") else ""
        sessions.append(f"pid {r['pid']} ({who(r)}{', ' + app if app else ''}) idle"
                        f"{aborted} for {seconds_text(r['seconds'])}")
    value = max(0.0, rows[0]["seconds"])
    data = {"count": len(rows),
            "sessions": [{**session_data(r), "state": r["state"],
                          "transaction_seconds": rounded(r["xact_seconds"])}
                         for r in rows[:10]]}
    return result("idle_in_transaction", grade(value, pair),
                  f"{len(rows)} session(s) idle in a transaction: {more(sessions)}",
                  value, "s", pair, data)


LOCK_WAITS = """
    WITH here AS (SELECT oid FROM pg_catalog.pg_database
                  WHERE datname = pg_catalog.current_database())
    SELECT w.pid, w.locktype, w.mode, w.database, w.relation::bigint AS relation,
           w.page, w.tuple, w.transactionid::text AS transactionid, w.virtualxid,
           w.classid::bigint AS classid, w.objid::bigint AS objid,
           d.datname AS lock_database,
           CASE WHEN w.relation IS NOT NULL
                     AND (w.database = 0 OR w.database = (SELECT oid FROM here))
                THEN (SELECT format('%I.%I', n.nspname, c.relname)
                      FROM pg_catalog.pg_class AS c
                      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                      WHERE c.oid = w.relation) END AS relname,
           extract(epoch FROM clock_timestamp()
                              - coalesce(w.waitstart, clock_timestamp()))::float8
               AS seconds,
           pg_catalog.pg_blocking_pids(w.pid) AS blocked_by,
           a.usename, a.datname, a.application_name, a.backend_type
    FROM pg_catalog.pg_locks AS w
    LEFT JOIN pg_catalog.pg_database AS d ON d.oid = w.database
    LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = w.pid
    WHERE NOT w.granted
    ORDER BY seconds DESC, w.pid"""


def relation_names(ctx: Context, waits: list[dict]) -> dict:
    """{(database, relation oid): name} for relations in other databases than ours, looked
    up there (best effort: a database that cannot be asked leaves the OID)."""
    wanted: dict[str, set] = {}
    for w in waits:
        if w["relation"] is not None and w["relname"] is None and w["lock_database"]:
            wanted.setdefault(w["lock_database"], set()).add(w["relation"])
    names = {}
    for db, oids in sorted(wanted.items())[:LIST_AT_MOST]:
        try:
            with connect(ctx.cfg, db) as conn:
                for row in query(conn, """
                        SELECT c.oid::bigint AS oid,
                               format('%%I.%%I', n.nspname, c.relname) AS name
                        FROM pg_catalog.pg_class AS c
                        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                        WHERE c.oid = ANY(%s)""", (sorted(oids),)):
                    names[(db, row["oid"])] = row["name"]
        except Exception:  # the OID is still a name
            continue
    return names


def lock_target(w: dict, names: dict) -> str:
    """What a waiting lock is for, in words (a row, a relation, a transaction ...)."""
    db = w["lock_database"]
    if w["relation"] is not None:  # database.schema.relation (shared: schema.relation)
        rel = w["relname"] or names.get((db, w["relation"])) or f"OID {w['relation']}"
        rel = f"{db}.{rel}" if db else rel
        if w["locktype"] == "tuple":
            return f"a row (page {w['page']}, tuple {w['tuple']}) of relation {rel}"
        if w["locktype"] == "relation":
            return f"relation {rel}"
        return f"{w['locktype']} of relation {rel}"
    if w["locktype"] == "transactionid":
        return f"transaction {w['transactionid']} (a row it changed)"
    if w["locktype"] == "virtualxid":
        return f"virtual transaction {w['virtualxid']}"
    if w["locktype"] == "advisory":
        return f"advisory lock ({w['classid']}, {w['objid']})"
    if w["locktype"] == "object":
        return f"object {w['classid']}/{w['objid']}"
    return str(w["locktype"])


def check_blocking_locks(ctx: Context) -> dict:
    """Sessions waiting for a lock: the longest wait in seconds (lock_wait_seconds),
    naming the waiting and the blocking pids and what they wait for."""
    if ctx.conn is None:
        return ctx.not_answering("blocking_locks")
    pair = ctx.th["lock_wait_seconds"]
    waits, seen = [], set()
    for w in query(ctx.conn, LOCK_WAITS):
        if w["pid"] not in seen:  # one lock awaited per process
            seen.add(w["pid"])
            waits.append(w)
    if not waits:
        return result("blocking_locks", OK, "no session is waiting for a lock", 0, "s",
                      pair, {"waiting": 0, "sessions": []})
    blocker_pids = sorted({p for w in waits for p in (w["blocked_by"] or []) if p})
    blockers = {r["pid"]: r for r in query(ctx.conn, """
        SELECT pid, usename, datname, application_name, backend_type, state,
               extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_seconds,
               extract(epoch FROM clock_timestamp() - state_change)::float8
                   AS state_seconds
        FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)""", (blocker_pids,))}
    names = relation_names(ctx, waits)

    def blocker_text(pid: int) -> str:
        if pid == 0:
            return "a prepared transaction (pg_prepared_xacts)"
        b = blockers.get(pid)
        if b is None:
            return f"pid {pid} (gone)"
        state = clean(b["state"]) or clean(b["backend_type"])
        return f"pid {pid} ({who(b)}, {state})"

    texts, data = [], []
    for w in waits:
        target = lock_target(w, names)
        by = list(w["blocked_by"] or [])
        texts.append(f"pid {w['pid']} ({who(w)}) waits {seconds_text(w['seconds'])} for "
                     f"{w['mode']} on {target}"
                     + (f", blocked by {', '.join(blocker_text(p) for p in by)}"
                        if by else ""))
        data.append({"pid": w["pid"], "blocked_by": by, "seconds": rounded(w["seconds"]),
                     "mode": w["mode"], "locktype": w["locktype"], "target": target,
                     "user": w["usename"], "database": w["datname"],
                     "application_name": clean(w["application_name"])})
    value = max(0.0, waits[0]["seconds"])
    shown = " / ".join(texts[:LIST_AT_MOST])
    if len(texts) > LIST_AT_MOST:
        shown += f" / and {len(texts) - LIST_AT_MOST} more"
    blocker_data = [{"pid": pid, "user": b["usename"], "database": b["datname"],
                     "application_name": clean(b["application_name"]),
                     "state": b["state"], "transaction_seconds": rounded(b["xact_seconds"])}
                    for pid, b in sorted(blockers.items())]
    return result("blocking_locks", grade(value, pair),
                  f"{len(waits)} session(s) waiting for a lock: {shown}", value, "s", pair,
                  {"waiting": len(waits), "sessions": data, "blockers": blocker_data})
