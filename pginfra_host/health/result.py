"""What every check returns and how it is judged: the statuses and their Nagios codes,
``result()`` (one check's result dict), ``grade()`` (a value against its [warning, critical]
pair), ``worst()``, and the small text helpers the checks' details share (numbers, durations,
client-supplied names on one printable line, lists cut to LIST_AT_MOST).
"""

from __future__ import annotations

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
NAGIOS_CODE = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}  # the overall status is the worst
EXIT_UNKNOWN = 3
LIST_AT_MOST = 3     # sessions, slots, indexes named in a detail; the rest are counted


def result(check: str, status: str, detail: str, value=None, unit: str | None = None,
           pair: tuple | None = None, data: dict | None = None) -> dict:
    """One check's result, as --json and the textfile report it: ``value`` in ``unit``
    (None: nothing measured), ``pair`` its (warning, critical) thresholds, ``data`` the
    details for machines."""
    return {"check": check, "status": status,
            "value": None if value is None else rounded(value), "unit": unit,
            "warning": None if pair is None else pair[0],
            "critical": None if pair is None else pair[1],
            "detail": detail, "data": data or {}}


def rounded(value):
    """A measured number as reported: 4 decimals below 10, 2 from there; others unchanged."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, int):
        return value
    return round(value, 4) if abs(value) < 10 else round(value, 2)


def grade(value, pair: tuple, lower_is_worse: bool = False) -> str:
    """A value at or above a threshold reaches it; lower_is_worse: a value below it."""
    if value is None:
        return OK
    warning, critical = pair
    if lower_is_worse:
        return CRITICAL if value < critical else WARNING if value < warning else OK
    return CRITICAL if value >= critical else WARNING if value >= warning else OK


def worst(statuses) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=OK)


def num(value) -> str:
    """A number as people and Nagios read it: no exponent, no trailing zeros."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def clean(text) -> str:
    """One printable line (names come from clients: application_name is theirs)."""
    text = "" if text is None else str(text)
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def one_line(exc) -> str:
    return " ".join(str(exc).split())


def more(items: list[str], total: int | None = None) -> str:
    """The first LIST_AT_MOST of ``items``, and how many more there are."""
    total = len(items) if total is None else total
    shown = items[:LIST_AT_MOST]
    return ", ".join(shown) + (f" and {total - len(shown)} more" if total > len(shown) else "")
