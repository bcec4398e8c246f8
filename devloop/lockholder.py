"""Which process really holds a project's lock, and stopping it without PID races.

The PID written in `.devloop/daemon.lock` is only a hint: a daemon killed by SIGKILL
leaves it behind and the number may be reused. The kernel's /proc/locks says who
holds the flock on that very inode, so `devloop stop` never signals a stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from devloop import statedir
from devloop.errors import EX_TEMPFAIL, DevloopError

PROC_LOCKS = Path("/proc/locks")


def flock_holders(path: Path) -> set[int]:
    """PIDs holding a flock() on `path`'s inode (blocked waiters excluded)."""
    try:
        st = os.stat(path)
        text = PROC_LOCKS.read_text()
    except FileNotFoundError:
        return set()
    holders = set()
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->" after "1:"
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) == (
                os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
            holders.add(int(fields[4]))
    return holders


def find(state_dir: Path) -> int | None:
    """The daemon's PID when one holds the lock; None when no process does."""
    lock = state_dir / statedir.LOCK_NAME
    holders = flock_holders(lock)
    if not holders:
        return None
    pid = statedir.holder_pid(state_dir)
    if pid not in holders:
        raise DevloopError(f"{lock} names PID {pid} but PID {min(holders)} holds the lock: "
                           "refusing to guess which one to stop", EX_TEMPFAIL)
    return pid


def manager(pid: int) -> str | None:
    """'systemd' or 'supervisord' when one of them runs `pid` (and will restart it)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    names = {e.partition(b"=")[0] for e in env}
    if b"INVOCATION_ID" in names:
        return "systemd"
    if b"SUPERVISOR_ENABLED" in names:
        return "supervisord"
    return None


@contextlib.contextmanager
def terminate(pid: int) -> Iterator[int]:
    """SIGTERM through a pidfd; yields the pidfd, which polls readable once `pid` exits."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = os.open(os.devnull, os.O_RDONLY)  # already gone: "exited" at once
        try:
            yield pidfd
        finally:
            os.close(pidfd)
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        yield pidfd
    finally:
        os.close(pidfd)
