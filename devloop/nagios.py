"""The Nagios / Icinga plugin verdict: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

Staleness follows the operator's thresholds (default: 2 and 4 heartbeat intervals,
60s/120s with the default interval), exceeded when the age is greater (`>`), as the
plugin guidelines say. A dead or foreign PID, or no heartbeat at all, is CRITICAL
whatever the age; a problem the daemon reports itself (watch limit, unwritable results)
is a WARNING; a heartbeat that cannot be read or is corrupt, or a project directory that
does not exist, is UNKNOWN. Failing checks are the project's business, not the daemon's:
they only go into the message and the performance data.
"""

from __future__ import annotations

import re
from pathlib import Path

from devloop.core.daemon_health import DEFAULT_INTERVAL_S, ERROR, HEALTHY, assess

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_UNSAFE = re.compile(r"[|\x00-\x1f\x7f]")  # '|' starts the perfdata; a newline, a 2nd line


def safe(text: str) -> str:
    """Text that cannot break the plugin's one line (names and messages are untrusted)."""
    return _UNSAFE.sub("?", text)


def usage_error(message: str) -> str:
    return f"DEVLOOP UNKNOWN - usage error: {safe(message)}"


def check(project: str, warning: float | None = None, critical: float | None = None,
          heartbeat: Path | None = None) -> tuple[int, str]:
    """(exit code, the plugin's output line) for the daemon watching `project`."""
    health, record = assess(project, heartbeat)
    interval = float(health.get("interval_seconds", DEFAULT_INTERVAL_S))
    warn = 2 * interval if warning is None else warning
    crit = 4 * interval if critical is None else critical
    message = safe(str(health["message"]))
    reason = health["reason"]
    if health["status"] == ERROR:
        return UNKNOWN, f"DEVLOOP UNKNOWN - {message}"
    if record is None:  # no heartbeat at all
        return CRITICAL, f"DEVLOOP CRITICAL - {message}"
    checks = record.get("checks", {})
    failing = sorted(safe(str(n)) for n, s in checks.items() if s.get("failing"))
    age = max(float(health["age_seconds"]), 0.0)
    if health["status"] == HEALTHY or reason == "stale":  # only the age may be wrong
        state = CRITICAL if age > crit else WARNING if age > warn else OK
        text = f"last heartbeat {age:.0f}s ago"
    else:
        state = WARNING if reason == "problem" else CRITICAL
        text = message
    if failing:
        text += f", {len(failing)} failing checks ({', '.join(failing)})"
    perf = f"age={age:.0f}s;{warn:g};{crit:g};0 failing_checks={len(failing)};;;0"
    return state, f"DEVLOOP {NAMES[state]} - {text} | {perf}"
