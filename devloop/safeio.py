"""Opening a file someone else may control: never hang on a FIFO, never read without end.

Project files (devloop.toml), files in a user's directories and the state files in
.devloop/ (statedir) are opened with O_NONBLOCK (a FIFO or a device would block the
reader for ever), O_NOFOLLOW where a symlink must not lead the reader elsewhere, and a
regular-file check; read_regular adds a size limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_PROJECT_FILE = 1 << 20  # 1 MiB: far above any real devloop.toml or unit file


class NotRegularFile(OSError):
    """A FIFO, a device, a directory or a socket where a regular file was expected."""


def open_regular(path: Path, flags: int = os.O_RDONLY, *, follow_symlinks: bool = False,
                 mode: int = 0o600) -> int:
    """os.open() of a regular file only: ELOOP for a symlink (unless followed),
    NotRegularFile for anything else; never blocks."""
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int = MAX_PROJECT_FILE, *,
                 follow_symlinks: bool = False) -> bytes:
    """The bytes of the regular file `path`; OSError (with a readable strerror) for a
    missing file, a symlink (unless followed), anything not a regular file, or more than
    `limit` bytes."""
    try:
        fd = open_regular(path, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise OSError(errno.ELOOP, "a symlink: not followed", str(path)) from None
        raise
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, min(65536, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)
