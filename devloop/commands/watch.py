"""`devloop watch --foreground DIR`: the daemon."""

from __future__ import annotations

import argparse
import asyncio

from devloop import config, statedir
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.daemon import Daemon, use_pidfd_child_watcher
from devloop.errors import EX_USAGE, DevloopError
from devloop.systemd import Notifier, setup_logging


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "watch",
        help="watch the project and run its checks on every change",
        description="Watch DIR with inotify and run the matching checks on every change. "
        "Under systemd it speaks sd_notify (READY, STATUS, WATCHDOG, STOPPING) and logs to "
        "the journal. SIGHUP reloads devloop.toml and the ignore rules; SIGTERM stops.",
    )
    p.add_argument("--foreground", action="store_true", required=True,
                   help="stay in the foreground (for systemd, supervisord or a terminal)")
    add_dir_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.foreground:
        raise DevloopError("watch needs --foreground", EX_USAGE)
    root = project_root(args.dir)
    cfg = config.load(root)
    setup_logging(str(root))
    state_dir = statedir.ensure(root)
    statedir.acquire(state_dir, root)  # held until the process exits
    notifier = Notifier()
    use_pidfd_child_watcher()
    return asyncio.run(Daemon(root, state_dir, cfg, notifier).run())
