"""Files devloop writes outside its state dir, and the header that marks them as ours.

Every such file carries `installed by devloop VERSION` in a comment near its top.
Only a file with that mark is ever overwritten or removed: an admin's own unit or hook
is reported and left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from devloop import __version__, safeio
from devloop.core.atomicfile import atomic_write
from devloop.errors import EX_CANTCREAT, EX_SOFTWARE, DevloopError
from devloop.printable import escape_controls

T = TypeVar("T")

MARK = re.compile(r"^[#;] installed by devloop (\S+?):?(\s|$)")
FOREIGN = "left alone"


def header(comment: str = "#") -> str:
    return (f"{comment} installed by devloop {__version__}: `devloop update-hooks` refreshes "
            f"this file; delete this line to keep your own edits\n")


def read_text(path: Path) -> str:
    """A file devloop wrote (or one in its place): never blocks, never unbounded."""
    return safeio.read_regular(path, follow_symlinks=True).decode("utf-8", errors="replace")


def mark_version(path: Path) -> str | None:
    """The version in the file's mark, or None when it has none (or cannot be read: a
    FIFO or a device planted there is not read, and never blocks us)."""
    try:
        head = read_text(path).splitlines()[:3]
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

    def as_list(self) -> list[str]:
        return [self.action, str(self.path), self.note]

    @classmethod
    def from_list(cls, data: list[str]) -> Change:
        return cls(str(data[0]), Path(str(data[1])), str(data[2]))

    def __str__(self) -> str:
        # names found in a user's directory reach root's terminal: no escape sequences
        return escape_controls(f"{self.action:10s} {self.path}"
                               f"{f' ({self.note})' if self.note else ''}")


def left_alone(path: Path) -> Change:
    return Change(FOREIGN, path, "not written by devloop: no 'installed by devloop' line")


def put(path: Path, text: str, *, mode: int = 0o644, dry_run: bool = False) -> Change:
    """Create or refresh `path` with `text`, unless it exists without our mark.

    Atomic (atomicfile.atomic_write: a new file renamed over the old one, which also
    replaces a symlink there instead of following it).
    """
    if path.exists() or path.is_symlink():
        old = mark_version(path)
        if old is None:
            return left_alone(path)
        try:
            if read_text(path) == text and not path.is_symlink():
                return Change("unchanged", path)
        except OSError as exc:
            raise DevloopError(f"cannot read {path}: {exc.strerror}", EX_CANTCREAT) from None
        action, note = "updated", f"{old} -> {__version__}" if old != __version__ else ""
    else:
        action, note = "created", ""
    if dry_run:
        return Change(f"would be {action}", path, note)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"), mode, durable=True)
    except OSError as exc:
        raise DevloopError(f"cannot write {path}: {exc.strerror}", EX_CANTCREAT) from None
    return Change(action, path, note)


def run_as(account: pwd.struct_passwd | None, fn: Callable[[], T]) -> T:
    """fn() with `account`'s uid, gid and groups when we are root and it is not.

    Root never writes, reads or removes inside another user's tree as root: a symlink
    planted there would point it at any file on the system. fn runs in a forked child
    that has dropped root for good; it hands back a JSON value (or a DevloopError).
    """
    if account is None or os.geteuid() != 0 or account.pw_uid == 0:
        return fn()
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(rfd)
        try:
            # root's terminal stays root's: a process of the user's (git) could take the
            # fds it inherits (ptrace, pidfd_getfd), read root's keys, write to its screen
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            os.chdir("/")
            for var in [v for v in os.environ if v.startswith(("XDG_", "GIT_"))]:
                del os.environ[var]  # root's: git as the user would read root's config
            os.environ.update(HOME=account.pw_dir, USER=account.pw_name,
                              LOGNAME=account.pw_name)
            os.initgroups(account.pw_name, account.pw_gid)
            os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
            os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
            out: dict[str, Any] = {"ok": fn()}
        except DevloopError as exc:
            out = {"error": exc.message, "code": exc.code}
        except OSError as exc:  # the user's tree changed under us, or is not ours to write
            out = {"error": f"as {account.pw_name}: {exc.filename}: {exc.strerror}",
                   "code": EX_CANTCREAT}
        except Exception as exc:  # reported by the parent as one line
            out = {"error": f"as {account.pw_name}: {exc}", "code": EX_SOFTWARE}
        try:
            with os.fdopen(wfd, "w", encoding="utf-8") as f:
                json.dump(out, f)
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, encoding="utf-8") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    try:
        data = json.loads(raw)
    except ValueError:
        raise DevloopError(f"the child working as {account.pw_name} died", EX_SOFTWARE) \
            from None
    if "error" in data:
        raise DevloopError(str(data["error"]), int(data["code"]))
    return cast(T, data["ok"])


def put_all(account: pwd.struct_passwd | None, files: list[tuple[Path, str]], *,
            mode: int = 0o644, dry_run: bool = False) -> list[Change]:
    """put() each file in order, as `account` (see run_as)."""
    def write() -> list[list[str]]:
        return [put(path, text, mode=mode, dry_run=dry_run).as_list() for path, text in files]
    return [Change.from_list(c) for c in run_as(account, write)]


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
