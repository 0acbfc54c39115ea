"""Go duration strings (``time.Duration``), as job and ETL messages carry them
(``init_timeout``, ``obj_timeout``, ``request_timeout``: ``"45s"``, ``"5m"``, ``"1m30s"``)."""

from __future__ import annotations

import re
from typing import Any

from aioetl.xactions.errs import InvalidMsg

__all__ = ["go_duration", "parse_duration_s"]

_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(value: Any, default_s: float) -> float:
    """Go duration string (``"5m"``, ``"45s"``, ``"1m30s"``) or a number of seconds.

    Raises:
        InvalidMsg: not a duration (400).
    """
    if value is None or value == "":
        return default_s
    if isinstance(value, (int, float)):
        if isinstance(value, bool) or value < 0:
            raise InvalidMsg(f"invalid duration {value!r}")
        # Go's JSON for time.Duration is nanoseconds
        return float(value) / 1e9 if value > 1e6 else float(value)
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise InvalidMsg(f'invalid duration "{s}": expected e.g. "45s", "5m", "1m30s"')
    return total


def go_duration(s: float) -> str:
    """Seconds as a Go duration string that :func:`parse_duration_s` reads back ("" for 0)."""
    if s <= 0:
        return ""
    ms = round(s * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
