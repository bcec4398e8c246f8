"""Which process really holds a project's lock, and stopping it without PID races.

The PID written in `.devloop/daemon.lock` is only a hint: a daemon killed by SIGKILL
leaves it behind and the number may be reused. The kernel's /proc/locks says who
took the flock on that very inode, but it keeps naming the taker after it died while
a child that inherited the fd lives on, and that PID may be reused too. So before
`devloop stop` signals anyone, the process must be a `devloop watch` that has this
project's lock file open right now, checked through a pidfd so the PID cannot change
hands between the check and the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devloop import procfs, statedir
from devloop.core import daemon_health
from devloop.errors import EX_TEMPFAIL, DevloopError

PROC_LOCKS = Path("/proc/locks")


def flock_holders(lock: tuple[int, int]) -> set[int]:
    """PIDs holding a flock() on the file (device, inode) (blocked waiters excluded)."""
    try:
        text = PROC_LOCKS.read_text()
    except FileNotFoundError:
        return set()
    dev, ino = lock
    holders = set()
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have "->" after "1:"
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(inode)) == (os.major(dev), os.minor(dev), ino):
            holders.add(int(fields[4]))
    return holders


def lock_identity(state_dir: Path) -> tuple[int, int] | None:
    """The lock file's (device, inode), opened without following a symlink; None if absent."""
    try:
        fd = statedir.open_private(state_dir / statedir.LOCK_NAME, os.O_RDONLY, own=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevloopError(f"cannot open {state_dir / statedir.LOCK_NAME}: {exc.strerror}",
                           EX_TEMPFAIL) from None
    try:
        return statedir.identity(os.fstat(fd))
    finally:
        os.close(fd)


def _has_open(pid: int, lock: tuple[int, int]) -> bool | None:
    """The process has the file (device, inode) open now; None when we may not look
    (another user's process, or one in a service's user namespace)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except PermissionError:
        return None
    except OSError:
        return False
    denied = False
    for fd in fds:
        try:
            st = os.stat(f"{fd_dir}/{fd}")
        except PermissionError:
            denied = True
            continue
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and statedir.identity(st) == lock:
            return True
    return None if denied else False


@dataclass(frozen=True)
class Holder:
    """A verified daemon: `pidfd` refers to the very process that was checked."""

    pid: int
    pidfd: int


@contextlib.contextmanager
def find(root: Path) -> Iterator[Holder | None]:
    """The daemon watching `root`, or None when no process holds its lock.

    Refuses (exit 75) when the holder is not provably this project's daemon.
    """
    state_dir = statedir.existing(root)
    lock = lock_identity(state_dir) if state_dir is not None else None
    holders = flock_holders(lock) if lock is not None else set()
    if state_dir is None or lock is None or not holders:
        yield None
        return
    pid = statedir.holder_pid(state_dir)
    if pid not in holders:
        raise DevloopError(f"{state_dir / statedir.LOCK_NAME} names PID {pid} but PID "
                           f"{min(holders)} holds the lock: refusing to guess which one to "
                           "stop", EX_TEMPFAIL)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        if pid in flock_holders(lock):  # the taker died; a process it passed the fd to lives
            raise DevloopError(f"PID {pid} took the lock of {root} and has exited, but "
                               "another process still holds it: refusing to guess which "
                               "one to stop", EX_TEMPFAIL) from None
        yield None  # it exited meanwhile
        return
    try:
        argv = procfs.cmdline(pid) or []
        # checked after pidfd_open, and the pidfd still names a live process below: the
        # PID cannot have been reused between this check and the signal
        has_open = _has_open(pid, lock)
        if has_open is None:
            raise DevloopError(
                f"PID {pid} holds the lock of {root}, but its open files cannot be checked "
                "from here (another user's, or a service's): refusing to signal it; use "
                "systemctl or supervisorctl, or run stop as its user", EX_TEMPFAIL)
        if not (daemon_health.watch_dir(argv) is not None and has_open):
            raise DevloopError(
                f"PID {pid} holds the lock of {root} but is not a devloop daemon with that "
                "lock open (an inherited lock, or a reused PID): refusing to signal it; "
                "stop it by hand if it is yours", EX_TEMPFAIL)
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            yield None
            return
        yield Holder(pid, pidfd)
    finally:
        os.close(pidfd)


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


def terminate(holder: Holder) -> None:
    """SIGTERM through the pidfd: never to a process that took over the PID."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(holder.pidfd, signal.SIGTERM)
