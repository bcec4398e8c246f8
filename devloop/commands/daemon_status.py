"""`devloop daemon-status DIR`: is the daemon alive and doing its job? (the heartbeat)"""

from __future__ import annotations

import argparse
import json

from devloop import nagios
from devloop.commands import Subparsers, add_dir_argument
from devloop.core.daemon_health import ERROR, HEALTHY, check_daemon_health

EXIT = {HEALTHY: 0, ERROR: 2}  # UNHEALTHY: 1
ICON = {HEALTHY: "✅", ERROR: "❗"}


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "daemon-status",
        help="HEALTHY / UNHEALTHY / ERROR from the daemon's heartbeat",
        description="Read DIR/.devloop/daemon.heartbeat. Exit 0 when HEALTHY, 1 when "
        "UNHEALTHY (not running, stale heartbeat, dead PID, or a problem it reports), "
        "2 on ERROR (the heartbeat cannot be read or parsed).",
    )
    add_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--nagios", action="store_true",
                   help="one line in the Nagios plugin format; exit 0 OK, 1 WARNING, "
                   "2 CRITICAL, 3 UNKNOWN")
    p.add_argument("--warning", type=float, metavar="SECONDS",
                   help="--nagios: heartbeat age for WARNING (default: 2 intervals, 60)")
    p.add_argument("--critical", type=float, metavar="SECONDS",
                   help="--nagios: heartbeat age for CRITICAL (default: 4 intervals, 120)")
    p.set_defaults(func=run)


def format_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def run(args: argparse.Namespace) -> int:
    if args.nagios:
        code, line = nagios.check(args.dir, args.warning, args.critical)
        print(line)
        return code
    health = check_daemon_health(args.dir)
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        print(f"{ICON.get(health['status'], '❌')} Daemon Status: {health['status']}")
        print(f"Message: {health['message']}")
        if "pid" in health:
            print(f"PID: {health['pid']}")
        if "uptime_seconds" in health:
            print(f"Uptime: {format_duration(health['uptime_seconds'])}")
    return EXIT.get(health["status"], 1)
