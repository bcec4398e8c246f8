"""The project's `.devloop/` directory: private to its user, and the single-instance lock.

Anyone who can write the project (a group-shared tree) could plant a `.devloop` of
their own or links inside it, so nothing in it is taken on trust: the directory and
every file the daemon opens in it must be a real directory or regular file (never a
symlink), owned by the daemon's user and not writable by group or others. Anything
else is refused with one line and exit 73 (EX_CANTCREAT).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from devloop import safeio
from devloop.core.daemon_health import STATE_DIR
from devloop.errors import EX_CANTCREAT, EX_TEMPFAIL, DevloopError

LOCK_NAME = "daemon.lock"
MAX_LOCK_BYTES = 64
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UnsafeStateError(DevloopError):
    """A state directory or file that breaks the module's rules: never to be retried."""


def unsafe(path: Path, why: str) -> UnsafeStateError:
    return UnsafeStateError(f"refusing to use {path}: {why}", EX_CANTCREAT)


def _check_owned(path: Path, st: os.stat_result) -> None:
    """Ours, and nobody else may write it."""
    if st.st_uid != os.geteuid():
        raise unsafe(path, f"it belongs to uid {st.st_uid}, not to this user "
                           f"(uid {os.geteuid()}); remove it or run devloop as its owner")
    if st.st_mode & _SHARED_WRITE:
        raise unsafe(path, f"group or others may write it (mode {stat.S_IMODE(st.st_mode):o}); "
                           "remove it, devloop recreates it private")


def ensure(root: Path) -> Path:
    """Create `.devloop/` (0700) or check the existing one (see the module's rules)."""
    path = root / STATE_DIR
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DevloopError(f"cannot create {path}: {exc.strerror}", EX_CANTCREAT) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise unsafe(path, "it is not a directory (a symlink?)") from None
        raise DevloopError(f"cannot open {path}: {exc.strerror}", EX_CANTCREAT) from None
    try:
        st = os.fstat(fd)
        _check_owned(path, st)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # read bits from an older umask: private from now on
    finally:
        os.close(fd)
    return path


def existing(root: Path) -> Path | None:
    """For readers (status, stop): `.devloop/` when it is there, never through a symlink."""
    path = root / STATE_DIR
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevloopError(f"cannot read {path}: {exc.strerror}", EX_CANTCREAT) from None
    if not stat.S_ISDIR(st.st_mode):
        raise unsafe(path, "it is not a directory (a symlink?)")
    return path


def open_private(path: Path, flags: int, *, own: bool = True) -> int:
    """os.open() of a state file, refused unless a regular file (and ours, with `own`).

    O_NOFOLLOW: a planted symlink is an error, never a way into another file.
    O_NONBLOCK: a planted FIFO cannot hang the open.
    """
    try:
        fd = safeio.open_regular(path, flags)
    except safeio.NotRegularFile:
        raise unsafe(path, "it is not a regular file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe(path, "it is a symlink") from None
        if own and exc.errno == errno.EACCES:
            _check_owned(path, os.lstat(path))  # another user's file: say so
        raise
    if own:
        try:
            _check_owned(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
    return fd


def read_private(path: Path, max_bytes: int, *, own: bool = True) -> bytes:
    """A small state file's content; a larger one is refused, not read into memory."""
    fd = open_private(path, os.O_RDONLY, own=own)
    try:
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise unsafe(path, f"it is larger than {max_bytes} bytes")
    return data


def holder_pid(state_dir: Path) -> int | None:
    """The PID the lock file names: a hint only (see lockholder)."""
    try:
        text = read_private(state_dir / LOCK_NAME, MAX_LOCK_BYTES, own=False).decode(
            "ascii", "replace").strip()
    except (OSError, DevloopError):
        return None
    return int(text) if text.isdigit() and len(text) < 10 else None


def identity(st: os.stat_result) -> tuple[int, int]:
    """What names one file on the machine: (device, inode)."""
    return st.st_dev, st.st_ino


@dataclass
class _Held:
    fd: int
    lock: tuple[int, int]
    root: tuple[int, int]


_HELD: dict[Path, _Held] = {}  # state dir -> the lock this process holds there


def acquire(state_dir: Path, root: Path) -> int:
    """Take the project's lock for the life of this process; returns the fd to keep open.

    flock() is released by the kernel when the process dies, even by SIGKILL, so a
    crashed daemon never leaves a stale lock behind.
    """
    path = state_dir / LOCK_NAME
    try:
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise DevloopError(f"cannot open {path}: {exc.strerror}", EX_CANTCREAT) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            pid = holder_pid(state_dir)
            for _ in range(50):  # the winner writes its PID just after it took the lock
                if pid:
                    break
                time.sleep(0.01)
                pid = holder_pid(state_dir)
            who = f"PID {pid}" if pid else "another process"
            raise DevloopError(
                f"another devloop daemon ({who}) is already watching {root}", EX_TEMPFAIL
            ) from None
        raise DevloopError(f"cannot lock {path}: {exc.strerror}", EX_CANTCREAT) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[state_dir] = _Held(fd, identity(os.fstat(fd)), identity(os.stat(root)))
    return fd


def project_gone(root: Path) -> bool:
    """The project no longer is the directory it was when its lock was taken.

    `rm -rf` sends no IN_DELETE_SELF while the daemon's open lock and database pin
    the directory's inode, so the daemon asks at each heartbeat instead.
    """
    held = _HELD.get(root / STATE_DIR)
    try:
        return held is not None and identity(os.stat(root)) != held.root
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # cannot tell (a permission changed on the way): keep watching


def lock_lost(state_dir: Path) -> bool:
    """`.devloop/daemon.lock` no longer is the file this process holds locked
    (`rm -rf .devloop`, `git clean -xdf`): another daemon could start beside us."""
    held = _HELD.get(state_dir)
    try:
        return held is not None and identity(os.lstat(state_dir / LOCK_NAME)) != held.lock
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def retake(root: Path) -> Path:
    """After lock_lost(): recreate `.devloop/` and take its new lock, or raise (75 when
    another daemon took it meanwhile: then that one watches, and this one must go)."""
    state_dir = ensure(root)
    old = _HELD.pop(state_dir, None)
    try:
        acquire(state_dir, root)
    finally:
        if old is not None:
            os.close(old.fd)
    return state_dir
