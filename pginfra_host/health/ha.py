"""The high-availability checks, run when the configuration's "ha" is set (Patroni runs
PostgreSQL on this host, etcd is its DCS); neither needs a connection to PostgreSQL.

patroni: GET /cluster on this member's Patroni REST API, graded by ``grade_cluster``: the
leader, this member, the members the inventory expects, pause, timelines, the replicas' lag
(replication_lag_mb). etcd: GET /health on every etcd endpoint (in parallel), graded by
``grade_etcd``: a minority down is a warning, a majority (no quorum) critical.

Both speak HTTPS with ``urllib.request``: the servers' certificates are checked against
ha.cafile (and their address), the client certificate ha.certfile/ha.keyfile is shown (etcd
requires one), no proxy is ever used, and every request waits at most query_timeout and never
past the run's deadline. ``grade_cluster`` and ``grade_etcd`` are pure: the tests feed them
recorded answers.

Patroni 3.0.2's /cluster (patroni/utils.py: cluster_as_json) lists the members sorted by name,
each with "name", "role" (leader, standby_leader, sync_standby, replica), "state" (running,
starting, stopped, crashed, "start failed", ...; a replica streaming is "running" there,
"streaming" from Patroni 3.0.4), "api_url", "host", "port", and when known "timeline" and, but
for the leader, "lag" (bytes behind the leader's last known position, or "unknown"); "pause":
true while paused.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from pginfra_host import util
from pginfra_host.health.config import HaSettings
from pginfra_host.health.context import Context
from pginfra_host.health.result import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    clean,
    grade,
    more,
    num,
    one_line,
    result,
    worst,
)

# A member whose PostgreSQL is up: "running" (Patroni 3.0.2, replicas too), "streaming" (a
# replica receiving WAL from its upstream, Patroni 3.0.4 and later).
UP_STATES = ("running", "streaming")
LEADER_ROLES = ("leader", "standby_leader", "master", "primary")  # the last two: Patroni 2
MAX_BODY = 1024 * 1024  # an answer larger than this is not Patroni's or etcd's


# ---------------------------------------------------------------------------------------------
# HTTPS

def tls_context(ha: HaSettings) -> ssl.SSLContext:
    """Servers checked against ha.cafile (certificate and address); the client certificate
    shown. ValueError naming the file when one cannot be read or they do not fit."""
    which = f"the CA {ha.cafile}"
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ha.cafile)
        which = f"the client certificate {ha.certfile} and its key {ha.keyfile}"
        context.load_cert_chain(ha.certfile, ha.keyfile)
    except OSError as exc:  # ssl.SSLError too
        raise ValueError(f"cannot load {which}: {failure(exc, 0)}") from None
    return context


def request_timeout(ctx: Context) -> float:
    """Seconds one request may wait: query_timeout, and less than what is left of the run."""
    limit = ctx.cfg.query_timeout
    if ctx.deadline is not None:
        limit = min(limit, ctx.deadline - time.monotonic() - 1)
    return max(0.5, limit)


def get_json(url: str, context: ssl.SSLContext, timeout: float) -> tuple[int, object]:
    """(HTTP status, the JSON it answered) of GET ``url``; an error status is returned too
    (etcd answers 503 with its reason). OSError (refused, timed out, TLS, ...) or ValueError
    (not JSON, too large)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "pginfra-health"})
    try:
        with opener.open(request, timeout=timeout) as response:
            status, body = response.status, response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = exc.code, exc.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ValueError(f"HTTP {status}: an answer larger than {MAX_BODY} bytes")
    try:
        return status, json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        text = clean(body[:80].decode("utf-8", "replace"))
        raise ValueError(f"HTTP {status}: not JSON ({text!r})") from None


def failure(exc: BaseException, timeout: float) -> str:
    """Why a request failed, in a few words."""
    inner = exc
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        inner = exc.reason
    if isinstance(inner, str):
        return clean(inner)
    if isinstance(inner, TimeoutError):
        return f"no answer within {num(round(timeout, 1))} s"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate: {clean(inner.verify_message)}"
    if isinstance(inner, ssl.SSLError):
        return f"TLS: {clean(inner.reason or one_line(inner))}"
    if isinstance(inner, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(inner, ValueError):
        return one_line(inner)
    if isinstance(inner, OSError) and inner.strerror:
        return clean(inner.strerror)
    return f"{type(inner).__name__}: {one_line(inner)}"


def endpoint(url: str) -> str:
    """An URL as the details name it: host:port."""
    return urllib.parse.urlsplit(url).netloc or url


# ---------------------------------------------------------------------------------------------
# patroni

def parse_cluster(answer) -> dict:
    """Patroni's /cluster answer checked: {"members": [{"name": ...}, ...], ...}; ValueError
    when it is not that."""
    members = answer.get("members") if isinstance(answer, dict) else None
    if not isinstance(members, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
            for m in members):
        raise ValueError("not Patroni's /cluster answer (no \"members\" list of named "
                         "members)")
    return answer


def _up(member: dict) -> bool:
    return member.get("state") in UP_STATES


def _state(member: dict) -> str:
    return clean(member.get("state")) or "in no state"


def _lag(member: dict) -> int | None:
    lag = member.get("lag")
    return lag if isinstance(lag, int) and not isinstance(lag, bool) else None


def local_ipv4(fib_trie: str) -> set[str]:
    """The IPv4 addresses this host holds, from /proc/net/fib_trie's text (each is a "/32 host
    LOCAL" leaf under its address): no command to run, and it sees a container's own."""
    found, last = set(), None
    for line in fib_trie.splitlines():
        words = line.replace("|--", " ").replace("+--", " ").split()
        if len(words) == 1 and words[0].count(".") == 3:
            last = words[0]
        elif "/32 host LOCAL" in line and last:
            found.add(last)
    return found


def holds(address: str, path: str = "/proc/net/fib_trie") -> bool | None:
    """Whether this host holds ``address`` now; None when it cannot tell."""
    try:
        with open(path, encoding="ascii", errors="replace") as trie:
            return address in local_ipv4(trie.read())
    except OSError:
        return None


def grade_cluster(cluster: dict, me: str, expected: tuple, pair: tuple,
                  synchronous: bool = False, vip: str = "",
                  holds_vip: bool | None = None) -> dict:
    """The patroni check's result from a /cluster answer (parse_cluster's), for member ``me``
    and the ``expected`` members. Critical: no leader, the leader's PostgreSQL not up, this
    member absent or not up. Warning: paused, an expected member absent or not up, members on
    different timelines, ``synchronous`` mode with no synchronous standby named (Patroni would
    replace no dead leader then). With a floating address ``vip``: a replica that holds it
    (``holds_vip``) is critical, clients writing there reach a read-only server; a leader
    that does not, a warning. The value: the largest replica lag in MB (``pair``:
    replication_lag_mb)."""
    members = {m["name"]: m for m in cluster["members"]}
    leaders = [m for m in members.values() if m.get("role") in LEADER_ROLES]
    leader = leaders[0] if leaders else None
    replicas = [m for m in members.values() if m is not leader]
    statuses, problems, notes = [OK], [], []
    if leader is None:
        statuses.append(CRITICAL)
        problems.append("no leader: nothing accepts writes (is etcd down, or a failover "
                        "under way?)")
    elif not _up(leader):
        statuses.append(CRITICAL)
        problems.append(f"the leader {clean(leader['name'])} is {_state(leader)}")
    mine = members.get(me)
    if mine is None:
        statuses.append(CRITICAL)
        problems.append(f"this member {me} is not in the cluster (its Patroni is not "
                        "registered in etcd)")
    elif mine is not leader and not _up(mine):
        statuses.append(CRITICAL)
        problems.append(f"this member {me} is {_state(mine)}")
    if cluster.get("pause") is True:
        statuses.append(WARNING)
        problems.append("paused (maintenance mode): Patroni neither fails over nor "
                        "restarts PostgreSQL")
    absent = [n for n in expected if n not in members and n != me]
    if absent:
        statuses.append(WARNING)
        problems.append(f"member(s) {more(absent)} absent from the cluster")
    down = [m for m in replicas if not _up(m) and m is not mine]
    if down:
        statuses.append(WARNING)
        problems.append("member(s) not streaming: " + more(
            [f"{clean(m['name'])} {_state(m)}" for m in down]))
    if synchronous and leader is not None and replicas and not any(
            m.get("role") == "sync_standby" for m in replicas):
        statuses.append(WARNING)
        problems.append("synchronous mode without a synchronous standby: were the leader to "
                        "fail now, Patroni would promote no one (none is known to hold every "
                        "commit)")
    if vip and holds_vip is not None and leader is not None and mine is not None:
        if mine is leader and not holds_vip:
            statuses.append(WARNING)
            problems.append(f"this leader does not hold the floating address {vip}: clients "
                            "calling it reach no one (is keepalived running?)")
        elif mine is not leader and holds_vip:
            statuses.append(CRITICAL)
            problems.append(f"this replica holds the floating address {vip}: clients "
                            "calling it reach a read-only server")
    timelines = {m["name"]: m["timeline"] for m in members.values()
                 if _up(m) and isinstance(m.get("timeline"), int)}
    if len(set(timelines.values())) > 1:
        statuses.append(WARNING)
        problems.append("timelines differ: " + ", ".join(
            f"{clean(n)} {t}" for n, t in sorted(timelines.items(), key=lambda i: i[1])))
    lags = [(_lag(m), m["name"]) for m in replicas if _lag(m) is not None]
    largest, behind = max(lags, default=(0, None))
    value = largest / util.MiB
    lag_status = grade(value, pair)
    if lag_status != OK:
        statuses.append(lag_status)
        problems.append(f"{clean(behind)} is {value:.2f} MB behind the leader")
    unknown_lag = [clean(m["name"]) for m in replicas if _up(m) and _lag(m) is None]
    if unknown_lag:
        notes.append(f"lag unknown for {more(unknown_lag)}")
    strangers = [clean(n) for n in members if n not in expected]
    if strangers:
        notes.append(f"member(s) {more(strangers)} not in the inventory")
    switchover = cluster.get("scheduled_switchover")
    if isinstance(switchover, dict):
        notes.append(f"switchover scheduled at {clean(switchover.get('at'))}")
    up = [m for m in replicas if _up(m)]
    sync = [clean(m["name"]) for m in up if m.get("role") == "sync_standby"]
    word = "streaming" if up and all(m.get("state") == "streaming" for m in up) else "running"
    summary = [] if leader is None else [
        f"leader {clean(leader['name'])}"
        + (" (standby leader)" if leader.get("role") == "standby_leader" else "")]
    summary.append(f"{len(up)} replica{'s' if len(up) != 1 else ''} {word}"
                   + (f" ({', '.join(sync)} sync)" if sync else ""))
    if len(set(timelines.values())) == 1:
        summary.append(f"timeline {next(iter(timelines.values()))}")
    if largest and lag_status == OK:
        summary.append(f"the largest lag {value:.2f} MB ({clean(behind)})")
    detail = "; ".join([*problems, ", ".join(summary), *notes])
    data = {"member": me, "leader": None if leader is None else leader["name"],
            "holds_vip": holds_vip,
            "paused": cluster.get("pause") is True, "replicas_streaming": len(up),
            "members_up": sum(1 for m in members.values() if _up(m)),
            "max_lag_bytes": largest, "absent": absent,
            "members": [{k: m.get(k) for k in ("name", "role", "state", "timeline", "lag")}
                        for m in cluster["members"]]}
    return result("patroni", worst(statuses), detail, value, "MB", pair, data)


def check_patroni(ctx: Context) -> dict:
    """GET /cluster on this member's Patroni REST API, judged by grade_cluster; no answer (or
    not Patroni's): unknown with the reason."""
    ha, pair = ctx.cfg.ha, ctx.th["replication_lag_mb"]
    url = f"{ha.rest_url}/cluster"
    try:
        context = tls_context(ha)
    except ValueError as exc:
        return result("patroni", UNKNOWN, str(exc), unit="MB", pair=pair)
    timeout = request_timeout(ctx)
    try:
        status, answer = get_json(url, context, timeout)
        if status != 200:
            raise ValueError(f"HTTP {status}")
        cluster = parse_cluster(answer)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return result("patroni", UNKNOWN, f"Patroni's REST API did not answer GET {url}: "
                      f"{failure(exc, timeout)}", unit="MB", pair=pair, data={"url": url})
    return grade_cluster(cluster, ha.member, ha.members, pair, ha.synchronous, ha.vip,
                         holds(ha.vip) if ha.vip else None)


# ---------------------------------------------------------------------------------------------
# etcd

def etcd_problem(status: int, answer) -> str | None:
    """None when etcd's /health answer says healthy; else why not."""
    health = answer.get("health") if isinstance(answer, dict) else None
    if status == 200 and health in ("true", True):
        return None
    if health is None:
        return f"HTTP {status}: not etcd's /health answer"
    reason = clean(answer.get("reason"))
    return f"unhealthy (HTTP {status}{': ' + reason if reason else ''})"


def probe_etcd(url: str, context: ssl.SSLContext, timeout: float) -> str | None:
    """None when the member at ``url`` answers /health healthy; else why not."""
    try:
        return etcd_problem(*get_json(f"{url}/health", context, timeout))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return failure(exc, timeout)
    except Exception as exc:  # a thread's: never lost
        return f"{type(exc).__name__}: {one_line(exc)}"


def probe_all(urls: tuple, context: ssl.SSLContext, timeout: float) -> list:
    """probe_etcd of every URL at once (a member that does not answer costs the timeout
    once, not once each); one still waiting after the timeout has not answered."""
    answers: list = [f"no answer within {num(round(timeout, 1))} s"] * len(urls)
    done = [False] * len(urls)

    def probe(i: int, url: str) -> None:
        answers[i] = probe_etcd(url, context, timeout)
        done[i] = True

    threads = [threading.Thread(target=probe, args=(i, url), daemon=True,
                                name=f"etcd {endpoint(url)}") for i, url in enumerate(urls)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + timeout + 1
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return [answer if finished else f"no answer within {num(round(timeout, 1))} s"
            for answer, finished in zip(answers, done, strict=True)]


def grade_etcd(answers: dict) -> dict:
    """The etcd check's result from {endpoint URL: None (healthy) or why not}: all healthy:
    ok; a minority not: warning; so many that the healthy are no majority: critical (no
    quorum: nothing can be written, Patroni demotes the leader). The value: members
    healthy."""
    total = len(answers)
    failed = {url: why for url, why in answers.items() if why is not None}
    healthy, quorum = total - len(failed), total // 2 + 1
    data = {"endpoints": total, "healthy": healthy, "quorum": quorum,
            "failed": {endpoint(url): why for url, why in failed.items()}}
    if not failed:
        return result("etcd", OK, f"all {total} etcd member{'s' if total != 1 else ''} "
                      f"healthy ({', '.join(endpoint(u) for u in answers)})", healthy,
                      data=data)
    named = "; ".join(f"{endpoint(url)}: {why}" for url, why in failed.items())
    if healthy >= quorum:
        return result("etcd", WARNING, f"{len(failed)} of {total} etcd members down, "
                      f"quorum kept ({healthy} healthy, {quorum} needed): {named}", healthy,
                      data=data)
    return result("etcd", CRITICAL, f"{len(failed)} of {total} etcd members down, no quorum "
                  f"({healthy} healthy, {quorum} needed: Patroni demotes the leader): "
                  f"{named}", healthy, data=data)


def check_etcd(ctx: Context) -> dict:
    """GET /health on every etcd endpoint with the client certificate, judged by
    grade_etcd."""
    ha = ctx.cfg.ha
    try:
        context = tls_context(ha)
    except ValueError as exc:
        return result("etcd", UNKNOWN, str(exc))
    answers = probe_all(ha.etcd_endpoints, context, request_timeout(ctx))
    return grade_etcd(dict(zip(ha.etcd_endpoints, answers, strict=True)))
