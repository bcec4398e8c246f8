"""Reading a file someone else may control: never hang on a FIFO, never read without end.

Project files (devloop.toml) and files in a user's directories are opened with
O_NONBLOCK (a FIFO or a device would block the reader for ever), O_NOFOLLOW where a
symlink must not lead the reader elsewhere, a regular-file check and a size limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_PROJECT_FILE = 1 << 20  # 1 MiB: far above any real devloop.toml or unit file


def read_regular(path: Path, limit: int = MAX_PROJECT_FILE, *,
                 follow_symlinks: bool = False) -> bytes:
    """The bytes of the regular file `path`; OSError (with a readable strerror) for a
    missing file, a symlink (unless followed), anything not a regular file, or more than
    `limit` bytes."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise OSError(errno.ELOOP, "a symlink: not followed") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, min(65536, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
