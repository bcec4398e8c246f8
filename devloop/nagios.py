"""The Nagios / Icinga plugin verdict: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

Staleness follows the operator's thresholds (default: 2 and 4 heartbeat intervals,
60s/120s with the default interval); a dead or missing daemon is CRITICAL at once, a
problem the daemon reports itself (watch limit, unwritable results) is a WARNING, and a
heartbeat that cannot be read is UNKNOWN. Failing checks are the project's business, not
the daemon's: they only go into the message and the performance data.
"""

from __future__ import annotations

from typing import Any

from devloop.core.daemon_health import ERROR, HEALTHY, check_daemon_health, read_heartbeat

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
DEFAULT_INTERVAL_S = 30.0


def _failing(record: dict[str, Any] | None) -> list[str]:
    checks = record.get("checks") if record else None
    if not isinstance(checks, dict):
        return []
    return sorted(str(n) for n, s in checks.items() if isinstance(s, dict) and s.get("failing"))


def check(project: str, warning: float | None = None,
          critical: float | None = None) -> tuple[int, str]:
    """(exit code, the plugin's output line) for the daemon watching `project`."""
    health = check_daemon_health(project)
    record = read_heartbeat(project)
    interval = record.get("interval_seconds") if record else None
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        interval = DEFAULT_INTERVAL_S
    warn = 2 * float(interval) if warning is None else warning
    crit = 4 * float(interval) if critical is None else critical
    message = str(health["message"]).replace("|", "/")  # '|' starts the performance data
    age = health.get("age_seconds")
    if health["status"] == ERROR:
        return UNKNOWN, f"DEVLOOP UNKNOWN - {message}"
    if age is None:  # no heartbeat at all
        return CRITICAL, f"DEVLOOP CRITICAL - {message}"
    failing = _failing(record)
    stale = health["status"] == HEALTHY or message.startswith("last heartbeat")
    if stale:  # healthy, or only too old: the thresholds decide
        seconds = max(float(age), 0.0)
        state = CRITICAL if seconds >= crit else WARNING if seconds >= warn else OK
        text = f"last heartbeat {seconds:.0f}s ago"
    else:
        state = WARNING if message.startswith("daemon reports a problem") else CRITICAL
        text = message
    if failing:
        text += f", {len(failing)} failing checks ({', '.join(failing)})"
    perf = (f"age={max(float(age), 0.0):.0f}s;{warn:g};{crit:g};0 "
            f"failing_checks={len(failing)};;;0")
    return state, f"DEVLOOP {NAMES[state]} - {text} | {perf}"
