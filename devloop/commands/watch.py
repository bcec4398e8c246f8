"""`devloop watch DIR`: the daemon, in the foreground or detached."""

from __future__ import annotations

# The daemon's modules are imported with this one, so what devloop/cli.py keeps out of the
# `watch` process (KEEP_OUT) stays out of them.
import argparse
import asyncio
import sys

from devloop import config, statedir
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.daemon import Daemon, use_pidfd_child_watcher
from devloop.errors import EX_OK
from devloop.systemd import Notifier, setup_logging

# detached mode's defaults (devloop/background.py, imported only in that mode: a foreground
# daemon does not carry its log rotation)
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
READY_TIMEOUT_S = 90.0  # like the units' TimeoutStartSec


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "watch",
        help="watch the project and run its checks on every change",
        description="Watch DIR with inotify and run the matching checks on every change. "
        "Under systemd it speaks sd_notify (READY, STATUS, WATCHDOG, STOPPING) and logs to "
        "the journal. SIGHUP reloads devloop.toml and the ignore rules; SIGTERM stops. "
        "Without --foreground it detaches, logs to DIR/.devloop/devloop.log and returns once "
        "the daemon is ready (exit 0) or has failed (its exit status); 'devloop stop DIR' "
        "stops it.",
    )
    p.add_argument("--foreground", action="store_true",
                   help="stay in the foreground (for systemd, supervisord or a terminal)")
    p.add_argument("--log-max-bytes", type=_positive_int, default=LOG_MAX_BYTES,
                   metavar="N", help="detached: rotate devloop.log at this size "
                   "(default 10 MB)")
    p.add_argument("--log-backups", type=_positive_int, default=LOG_BACKUPS,
                   metavar="N", help="detached: rotated logs to keep (default 3)")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                   metavar="SECONDS", help="detached: how long to wait for the daemon to be "
                   "ready (default 90); it keeps starting after that")
    add_dir_argument(p)
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def run(args: argparse.Namespace) -> int:
    root = project_root(args.dir)
    cfg = config.load(root)
    if not args.foreground:
        from devloop import background

        started = background.start(root, cfg, max_bytes=args.log_max_bytes,
                                   backups=args.log_backups, timeout=args.ready_timeout)
        if started.code == EX_OK:
            print(f"devloop: watching {root}: {started.message}")
        else:
            print(f"devloop: error: {started.message}", file=sys.stderr)
        return started.code
    setup_logging(str(root))
    state_dir = statedir.ensure(root)
    statedir.acquire(state_dir, root)  # held until the process exits
    notifier = Notifier()
    use_pidfd_child_watcher()
    return asyncio.run(Daemon(root, state_dir, cfg, notifier).run())
