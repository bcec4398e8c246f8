"""The one atomic file write: readers see the old file or the new one, never a part.

Standard library only, like the rest of devloop.core (monitoring hosts import it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(target: Path, raw: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
    """Write a new file (O_EXCL, `mode`) in the target's directory, then rename it over
    the target; a planted symlink at `target` is replaced, never followed, and no
    temporary file is left behind. `durable` fsyncs the file before the rename, for files
    that must survive a crash whole (installed units); a heartbeat rewritten every few
    seconds need not pay for it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
