"""`devloop daemon-status DIR`: is the daemon alive and doing its job? (the heartbeat)"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from devloop import nagios
from devloop.commands import Subparsers, add_dir_argument
from devloop.core.daemon_health import ERROR, HEALTHY, check_daemon_health
from devloop.errors import EX_USAGE

EXIT = {HEALTHY: 0, ERROR: 2}  # UNHEALTHY: 1
ICON = {HEALTHY: "✅", ERROR: "❗"}


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "daemon-status",
        help="HEALTHY / UNHEALTHY / ERROR from the daemon's heartbeat",
        description="Read DIR/.devloop/daemon.heartbeat. Exit 0 when HEALTHY, 1 when "
        "UNHEALTHY (not running, a dead PID or not this project's daemon, a stale "
        "heartbeat, or a problem it reports), 2 on ERROR (no such project directory, or "
        "the heartbeat cannot be read or is corrupt).",
    )
    p.__class__ = _Parser
    add_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--nagios", action="store_true",
                   help="one line in the Nagios plugin format; exit 0 OK, 1 WARNING, "
                   "2 CRITICAL, 3 UNKNOWN (a usage error too)")
    p.add_argument("--warning", type=_seconds, metavar="SECONDS",
                   help="--nagios: WARNING when the heartbeat is older (default: 2 "
                   "intervals, 60)")
    p.add_argument("--critical", type=_seconds, metavar="SECONDS",
                   help="--nagios: CRITICAL when the heartbeat is older (default: 4 "
                   "intervals, 120)")
    p.add_argument("--health-file", type=Path, metavar="FILE",
                   help="read this published copy of the heartbeat (the project's "
                   "health_file) instead of DIR/.devloop/daemon.heartbeat, which only the "
                   "daemon's user may read")
    p.set_defaults(func=run)


class _Parser(argparse.ArgumentParser):
    """With --nagios a usage error is UNKNOWN (exit 3, one line on stdout): Nagios reports
    any other code as "out of bounds" and shows argparse's usage text."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        """Unknown arguments are this parser's error (the top-level one would say 64)."""
        known, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return known, extras

    def error(self, message: str) -> NoReturn:
        if "--nagios" in sys.argv[1:]:
            print(nagios.usage_error(message), flush=True)
            self.exit(nagios.UNKNOWN)
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 1e9:  # also nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0: {text}")
    return value


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
        if None not in (args.warning, args.critical) and args.warning > args.critical:
            print(nagios.usage_error(f"--warning {args.warning:g} is greater than "
                                     f"--critical {args.critical:g}"))
            return nagios.UNKNOWN
        code, line = nagios.check(args.dir, args.warning, args.critical, args.health_file)
        print(line)
        return code
    health = check_daemon_health(args.dir, args.health_file)
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
