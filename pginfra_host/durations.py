"""PostgreSQL's duration grammar, once: what ``lock_timeout``, ``statement_timeout`` and the
like accept, as the inventory's settings and the programs' configurations both write them.

    >>> milliseconds("1.5min"), milliseconds("250"), milliseconds("2 h"), milliseconds("5 s ago")
    (90000.0, 250.0, 7200000.0, None)
"""

from __future__ import annotations

import re

INT_MAX = (1 << 31) - 1  # PostgreSQL's largest timeout, in milliseconds
UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?$")


def milliseconds(value) -> float | None:
    """Milliseconds of a duration string ('5s', '500ms', '2h', '1.5min'; a bare number is
    milliseconds), or None when it is not one."""
    found = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not found:
        return None
    return float(found.group(1)) * UNITS_MS[found.group(2) or "ms"]
