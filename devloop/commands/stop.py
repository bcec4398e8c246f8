"""`devloop stop DIR`: stop the daemon that holds the project's lock, and wait for it."""

from __future__ import annotations

import argparse
import select

from devloop import lockholder
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.errors import EX_OK, EX_TEMPFAIL, DevloopError

STOP_TIMEOUT_S = 30.0  # like the units' TimeoutStopSec


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "stop",
        help="stop the daemon watching the project and wait until it has exited",
        description="Find the daemon holding DIR/.devloop/daemon.lock (the PID in the file "
        "must be the process that holds the flock, and a devloop watch with that lock file "
        "open; otherwise exit 75 without signalling anyone), send it SIGTERM and wait until "
        "it has exited: it kills its checks and removes its heartbeat. Exit 0 when it stopped or "
        "none was running, 75 when it is still running after --timeout. A daemon run by "
        "systemd or supervisord is restarted by them: use systemctl or supervisorctl.",
    )
    add_dir_argument(p)
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, metavar="SECONDS",
                   help="how long to wait for it to exit (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = project_root(args.dir)
    with lockholder.find(root) as holder:
        if holder is None:
            print(f"devloop: no daemon is watching {root}")
            return EX_OK
        manager = lockholder.manager(holder.pid)
        if manager:
            print(f"devloop: note: PID {holder.pid} runs under {manager}, which may restart it")
        lockholder.terminate(holder)
        if not select.select([holder.pidfd], [], [], args.timeout)[0]:
            raise DevloopError(f"daemon PID {holder.pid} is still running {args.timeout:g}s "
                               "after SIGTERM", EX_TEMPFAIL)
    print(f"devloop: stopped the daemon watching {root} (PID {holder.pid})")
    return EX_OK
