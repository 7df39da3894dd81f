"""The replication check. On a primary: the largest replay lag of a replica or WAL retained
by a slot, in MB; slots that lost (or are about to lose) WAL; standbys of the configuration
that do not stream. On a standby: WAL received but not replayed, the WAL receiver streaming,
replay paused.
"""

from __future__ import annotations

from pginfra_host import util
from pginfra_host.health.context import Context
from pginfra_host.health.db import query, query_one
from pginfra_host.health.result import (
    CRITICAL,
    OK,
    WARNING,
    clean,
    grade,
    more,
    result,
    rounded,
    worst,
)


def check_replication(ctx: Context) -> dict:
    """On a primary: the largest replay lag of a replica or WAL retained by a slot, in MB
    (replication_lag_mb); a slot that lost WAL: critical; a configured standby not
    streaming: warning. On a standby: standby_replication."""
    if ctx.conn is None:
        return ctx.not_answering("replication")
    if ctx.in_recovery:
        return standby_replication(ctx)
    pair = ctx.th["replication_lag_mb"]
    replicas = query(ctx.conn, """
        SELECT pid, application_name, client_addr::text AS client_addr, state, sync_state,
               pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                   coalesce(replay_lsn, flush_lsn, write_lsn, sent_lsn))::float8
                   AS lag_bytes,
               extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds
        FROM pg_catalog.pg_stat_replication
        WHERE state <> 'backup'
        ORDER BY application_name, pid""")
    slots = query(ctx.conn, """
        SELECT slot_name, slot_type, active, wal_status,
               pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                                          restart_lsn)::float8 AS retained_bytes
        FROM pg_catalog.pg_replication_slots ORDER BY slot_name""")
    streaming_names = {r["application_name"] for r in replicas
                       if r["state"] == "streaming"}
    absent = [n for n in ctx.cfg.standbys if n not in streaming_names]
    if not replicas and not slots and not absent:
        return result("replication", OK, "no replicas", 0, "MB", pair,
                      {"role": "primary", "replicas": [], "slots": []})
    lags = [(r["lag_bytes"] or 0.0, f"replica {clean(r['application_name'])} "
             f"(pid {r['pid']}, {r['state']})") for r in replicas]
    lags += [(s["retained_bytes"] or 0.0, f"slot {s['slot_name']}") for s in slots]
    lags = lags or [(0.0, "none")]
    largest, where = max(lags, key=lambda item: item[0])
    value = max(0.0, largest) / util.MiB
    statuses, notes = [grade(value, pair)], []
    lost = [s["slot_name"] for s in slots if s["wal_status"] == "lost"]
    unreserved = [s["slot_name"] for s in slots if s["wal_status"] == "unreserved"]
    inactive = [s["slot_name"] for s in slots if not s["active"]]
    if lost:
        statuses.append(CRITICAL)
        notes.append(f"slot(s) {more(lost)} lost WAL their consumer still needs")
    if unreserved:
        statuses.append(WARNING)
        notes.append(f"slot(s) {more(unreserved)} about to lose WAL "
                     "(max_slot_wal_keep_size)")
    if inactive:
        notes.append(f"{len(inactive)} inactive slot(s): {more(inactive)}")
    if absent:  # the inventory's standbys of this server, each expected to stream
        statuses.append(WARNING)
        notes.append(f"standby(s) {more(absent)} not streaming from this server")
    streaming = [r for r in replicas if r["state"] == "streaming"]
    detail = (f"{len(replicas)} replica(s) ({len(streaming)} streaming), {len(slots)} "
              f"slot(s); the largest lag {value:.2f} MB: {where}")
    if notes:
        detail += "; " + "; ".join(notes)
    data = {"role": "primary", "inactive_slots": len(inactive), "absent_standbys": absent,
            "replicas": [{"pid": r["pid"], "application_name":
                          clean(r["application_name"]), "client_addr": r["client_addr"],
                          "state": r["state"], "sync_state": r["sync_state"],
                          "lag_bytes": rounded(r["lag_bytes"]),
                          "replay_lag_seconds": rounded(r["replay_lag_seconds"])}
                         for r in replicas],
            "slots": [{"slot_name": s["slot_name"], "slot_type": s["slot_type"],
                       "active": s["active"], "wal_status": s["wal_status"],
                       "retained_bytes": rounded(s["retained_bytes"])} for s in slots]}
    return result("replication", worst(statuses), detail, value, "MB", pair, data)


def standby_replication(ctx: Context) -> dict:
    """On a standby: WAL received but not replayed, in MB; no WAL receiver streaming:
    critical; replay paused: warning."""
    pair = ctx.th["replication_lag_mb"]
    receivers = query(ctx.conn, """
        SELECT status, sender_host, sender_port, slot_name,
               extract(epoch FROM clock_timestamp() - last_msg_receipt_time)::float8
                   AS since_message
        FROM pg_catalog.pg_stat_wal_receiver""")
    row = query_one(ctx.conn, """
        SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(),
                   pg_catalog.pg_last_wal_replay_lsn())::float8 AS lag_bytes,
               pg_catalog.pg_get_wal_replay_pause_state() AS pause_state,
               extract(epoch FROM clock_timestamp()
                                  - pg_catalog.pg_last_xact_replay_timestamp())::float8
                   AS since_replayed""")
    value = max(0.0, row["lag_bytes"] or 0.0) / util.MiB
    statuses, notes = [grade(value, pair)], []
    receiver = receivers[0] if receivers else None
    if receiver is None or receiver["status"] != "streaming":
        statuses.append(CRITICAL)
        notes.append("no WAL receiver is streaming (pg_stat_wal_receiver "
                     + (f"says {receiver['status']})" if receiver else "is empty)"))
    else:
        notes.append(f"streaming from {clean(receiver['sender_host'])}:"
                     f"{receiver['sender_port']}")
    if row["pause_state"] != "not paused":
        statuses.append(WARNING)
        notes.append(f"replay is {row['pause_state']} (pg_wal_replay_resume() resumes it)")
    detail = f"standby: {value:.2f} MB received but not replayed; " + "; ".join(notes)
    return result("replication", worst(statuses), detail, value, "MB", pair,
                  {"role": "standby", "receiver": receiver and
                   {"status": receiver["status"], "sender_host": receiver["sender_host"],
                    "sender_port": receiver["sender_port"],
                    "slot_name": receiver["slot_name"],
                    "seconds_since_message": rounded(receiver["since_message"])},
                   "lag_bytes": rounded(row["lag_bytes"]),
                   "replay_paused": row["pause_state"] != "not paused",
                   "seconds_since_replayed_transaction": rounded(row["since_replayed"])})
