"""Files devloop writes outside its state dir, and the header that marks them as ours.

Every such file carries `installed by devloop VERSION` in a comment near its top.
Only a file with that mark is ever overwritten or removed: an admin's own unit or hook
is reported and left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devloop import __version__
from devloop.errors import EX_CANTCREAT, DevloopError

MARK = re.compile(r"^[#;] installed by devloop (\S+?):?(\s|$)")
FOREIGN = "left alone"


def header(comment: str = "#") -> str:
    return (f"{comment} installed by devloop {__version__}: `devloop update-hooks` refreshes "
            f"this file; delete this line to keep your own edits\n")


def mark_version(path: Path) -> str | None:
    """The version in the file's mark, or None when it has none (or cannot be read)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            head = [f.readline() for _ in range(3)]
    except OSError:
        return None
    for line in head:
        if m := MARK.match(line):
            return m.group(1)
    return None


@dataclass(frozen=True)
class Change:
    action: str  # created, updated, unchanged, removed, absent, left alone (+ "would ...")
    path: Path
    note: str = ""

    def __str__(self) -> str:
        return f"{self.action:10s} {self.path}{f' ({self.note})' if self.note else ''}"


def put(path: Path, text: str, *, mode: int = 0o644, owner: tuple[int, int] | None = None,
        dry_run: bool = False) -> Change:
    """Create or refresh `path` with `text`, unless it exists without our mark."""
    if path.exists() or path.is_symlink():
        old = mark_version(path)
        if old is None:
            return Change(FOREIGN, path, "not written by devloop: no 'installed by devloop' "
                          "line")
        try:
            if path.read_text(encoding="utf-8") == text and not path.is_symlink():
                return Change("unchanged", path)
        except OSError as exc:
            raise DevloopError(f"cannot read {path}: {exc.strerror}", EX_CANTCREAT) from None
        action, note = "updated", f"{old} -> {__version__}" if old != __version__ else ""
    else:
        action, note = "created", ""
    if dry_run:
        return Change(f"would be {action}", path, note)
    try:
        _mkdirs(path.parent, owner)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
        os.replace(tmp, path)
    except OSError as exc:
        raise DevloopError(f"cannot write {path}: {exc.strerror}", EX_CANTCREAT) from None
    return Change(action, path, note)


def _mkdirs(path: Path, owner: tuple[int, int] | None) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o755)
        if owner is not None:
            os.chown(p, *owner)


def remove(path: Path, *, dry_run: bool = False) -> Change:
    """Remove `path` if it carries our mark; then its directory if that is left empty."""
    if not path.exists():
        return Change("absent", path)
    if mark_version(path) is None:
        return Change(FOREIGN, path, "not written by devloop: not removing it")
    if dry_run:
        return Change("would be removed", path)
    try:
        path.unlink()
    except OSError as exc:
        raise DevloopError(f"cannot remove {path}: {exc.strerror}", EX_CANTCREAT) from None
    if path.parent.name.endswith(".d"):
        with contextlib.suppress(OSError):  # not empty: an admin's own drop-ins stay
            path.parent.rmdir()
    return Change("removed", path)
