"""A host that restarts comes back serving: after a clean reboot and after a power cycle (the
container killed, no shutdown), PostgreSQL, PgBouncer and cron are running again by themselves,
listening where they are configured to, the health check is OK, and a deploy changes
nothing."""

from __future__ import annotations

import json

import pytest
from conftest import HOST, client, run_pyinfra, wait_for

HEALTH = "/usr/local/lib/pginfra/pginfra-health"


def listening(lab) -> set[str]:
    out = lab.ssh("pgt1", ["ss", "-Hltn"]).stdout
    return {line.split()[3] for line in out.splitlines() if len(line.split()) >= 4}


def serving(lab) -> dict:
    """What a client and the on-call engineer need after the boot, or {} while it settles."""
    state = {unit: lab.ssh("pgt1", ["systemctl", "is-active", unit], check=False).stdout.strip()
             for unit in ("postgresql@15-main", "pgbouncer", "cron")}
    if set(state.values()) != {"active"}:
        return {}
    return {"units": state, "listening": listening(lab)}


@pytest.mark.parametrize("hard", [False, True], ids=["reboot", "power-cycle"])
def test_the_host_comes_back_serving(lab, first_deploy, secret, hard):
    old_boot = lab.boot_id("pgt1")
    lab.reboot("pgt1", hard=hard)
    assert lab.boot_id("pgt1") != old_boot
    state = wait_for(lambda: serving(lab), "the services after the boot", 90)
    assert {f"{HOST}:5432", f"{HOST}:6432", "127.0.0.1:5432"} <= state["listening"], state
    with client(secret("app")) as conn:  # over TLS, from the lab network
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with client(secret("app"), port=6432) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    health = lab.ssh("pgt1", [HEALTH, "--json"], check=False, timeout=120)
    report = json.loads(health.stdout.strip().splitlines()[-1])
    assert health.returncode == 0, report
    second = run_pyinfra(lab)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.changed == []
