"""The project's `.devloop/` directory: private to its user, and the single-instance lock."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from devloop.core.daemon_health import STATE_DIR
from devloop.errors import EX_CANTCREAT, EX_TEMPFAIL, DevloopError

LOCK_NAME = "daemon.lock"


def ensure(root: Path) -> Path:
    """Create `.devloop/` (0700) or check the existing one; a symlink there is refused."""
    path = root / STATE_DIR
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DevloopError(f"cannot create {path}: {exc.strerror}", EX_CANTCREAT) from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DevloopError(f"{path} is not a directory (a symlink?): refusing to use it",
                           EX_CANTCREAT)
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def holder_pid(state_dir: Path) -> int | None:
    try:
        text = (state_dir / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire(state_dir: Path, root: Path) -> int:
    """Take the project's lock for the life of this process; returns the fd to keep open.

    flock() is released by the kernel when the process dies, even by SIGKILL, so a
    crashed daemon never leaves a stale lock behind.
    """
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DevloopError(f"cannot open {path}: {exc.strerror}", EX_CANTCREAT) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            pid = holder_pid(state_dir)
            who = f"PID {pid}" if pid else "another process"
            raise DevloopError(
                f"another devloop daemon ({who}) is already watching {root}", EX_TEMPFAIL
            ) from None
        raise DevloopError(f"cannot lock {path}: {exc.strerror}", EX_CANTCREAT) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
