"""The report as monitoring reads it: the Nagios line with perfdata (the default), one line
per check (--verbose), one line of JSON (--json), and every check as Prometheus gauges in the
node exporter's textfile format (written atomically, mode 0644).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from pginfra_host import util
from pginfra_host.health.config import THRESHOLDS, HealthConfig
from pginfra_host.health.result import NAGIOS_CODE, OK, SEVERITY, clean, num

# The checks where lower is worse (cache_hit_ratio): their Nagios ranges are "x:".
LOWER_IS_WORSE = {check for threshold in THRESHOLDS.values() if threshold.lower_is_worse
                  for check in threshold.checks}


def perfdata(check: dict) -> str:
    unit = check["unit"] if check["unit"] in ("s", "%", "MB") else ""
    warning, critical = num(check["warning"]), num(check["critical"])
    if check["check"] in LOWER_IS_WORSE:  # Nagios ranges: "x:" alerts below x
        warning, critical = (f"{w}:" if w else "" for w in (warning, critical))
    return f"{check['check']}={num(check['value'])}{unit};{warning};{critical}"


def nagios_text(text: str) -> str:
    return clean(text).replace("|", "/")


def nagios_line(report: dict) -> str:
    checks = report["checks"]
    bad = sorted((c for c in checks if c["status"] != OK),
                 key=lambda c: -SEVERITY[c["status"]])  # stable: check order within a status
    if not bad:
        text = f"{len(checks)} check{'s' if len(checks) != 1 else ''} ok"
    else:
        groups: dict[tuple, list[str]] = {}
        for c in bad:  # the same detail once: "connections, long_running: PostgreSQL ..."
            groups.setdefault((c["status"], c["detail"]), []).append(c["check"])
        text = "; ".join(f"{', '.join(names)}: {detail}"
                         for (_status, detail), names in groups.items())
    line = f"PGINFRA {report['status'].upper()} - {nagios_text(text)}"
    perf = " ".join(perfdata(c) for c in checks if c["value"] is not None)
    return f"{line} | {perf}" if perf else line


def value_text(check: dict) -> str:
    if check["value"] is None:
        return "-"
    return f"{num(check['value'])} {check['unit']}" if check["unit"] else num(check["value"])


def thresholds_text(check: dict) -> str:
    if check["warning"] is None:
        return "-"
    below = "<" if check["check"] in LOWER_IS_WORSE else ""
    return f"warn {below}{num(check['warning'])} crit {below}{num(check['critical'])}"


def verbose_lines(report: dict, alerts_only: bool) -> list[str]:
    checks = [c for c in report["checks"] if c["status"] != OK or not alerts_only]
    if not checks:
        n = len(report["checks"])
        return [f"all {n} check{'s' if n != 1 else ''} ok"]
    return [f"{c['status'].upper():<8} {c['check']:<19} {value_text(c):>16}  "
            f"{thresholds_text(c):<20} {clean(c['detail'])}" for c in checks]


def print_report(report: dict, args) -> None:
    if args.json:
        shown = report if not args.alerts_only else {
            **report, "checks": [c for c in report["checks"] if c["status"] != OK]}
        print(json.dumps(shown, default=str, separators=(",", ":")))
    elif args.verbose:
        print("\n".join(verbose_lines(report, args.alerts_only)))
    else:
        print(nagios_line(report))


def label_value(text) -> str:
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metric_number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def textfile_text(report: dict) -> str:
    checks = report["checks"]
    lines: list[str] = []

    def family(name: str, text: str, samples: list[str]) -> None:
        if samples:
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} gauge", *samples])

    family("pginfra_health_status", "Status of each pginfra health check: 0 ok, 1 warning, "
           "2 critical, 3 unknown.",
           [f'pginfra_health_status{{check="{label_value(c["check"])}"}} '
            f'{NAGIOS_CODE[c["status"]]}' for c in checks])
    family("pginfra_health_value", "The value each pginfra health check measured, in its "
           "unit.",
           [f'pginfra_health_value{{check="{label_value(c["check"])}",'
            f'unit="{label_value(c["unit"] or "")}"}} {metric_number(c["value"])}'
            for c in checks if c["value"] is not None])
    family("pginfra_health_threshold", "The warning and critical thresholds of each pginfra "
           "health check (cache_hit_ratio: lower is worse).",
           [f'pginfra_health_threshold{{check="{label_value(c["check"])}",level="{level}"}} '
            f"{metric_number(c[level])}"
            for c in checks if c["warning"] is not None for level in ("warning", "critical")])
    family("pginfra_health_exit_code", "The run's Nagios exit code: 0 ok, 1 warning, "
           "2 critical, 3 unknown.", [f"pginfra_health_exit_code {report['exit_code']}"])
    family("pginfra_health_duration_seconds", "How long the run took.",
           [f"pginfra_health_duration_seconds {metric_number(report['duration_seconds'])}"])
    family("pginfra_health_last_run_timestamp_seconds", "When the run started, in seconds "
           "since the epoch.",
           [f"pginfra_health_last_run_timestamp_seconds "
            f"{metric_number(util.parse_time(report['time']).timestamp())}"])
    return "\n".join(lines) + "\n"


def write_textfile(path: str, report: dict) -> None:
    """Atomically: a temporary file in the same directory (not *.prom, so the collector never
    reads it half written), fsync, mode 0644, rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(textfile_text(report))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def textfile_path(args, cfg: HealthConfig) -> str | None:
    if args.no_textfile:
        return None
    if args.textfile:
        return args.textfile
    # A partial run (--check) must not replace the full picture the collector reads.
    return None if args.check else cfg.textfile
