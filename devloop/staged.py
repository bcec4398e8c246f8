"""What a commit would hold: the staged content of a project, for the pre-commit hook.

The working tree is never touched (an editor or the daemon may be writing to it):
the index is checked out into a temporary tree (`git checkout-index --prefix`, as
pre-commit's staged_files_only isolates what is committed), the checks run there,
and their findings, relative to the project root, name the same files in the real
tree. The project's venv is linked in, so its tools run as they do in the real tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from devloop.errors import EX_NOINPUT, DevloopError
from devloop.tools.env import VENVS


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        r = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True,
                           timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevloopError(f"git {args[0]}: {exc}", EX_NOINPUT) from None
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise DevloopError(f"git {args[0]}: {msg[-1] if msg else f'exit {r.returncode}'}",
                           EX_NOINPUT)
    return r.stdout


def _names(out: bytes) -> list[str]:
    return [os.fsdecode(n) for n in out.split(b"\0") if n]


def staged_files(root: Path) -> list[str]:
    """Files added, copied, modified or renamed in the index, relative to `root`."""
    return _names(_git(root, "diff", "--cached", "--name-only", "--diff-filter=ACMR", "-z",
                       "--relative"))


def unstaged_files(root: Path) -> set[str]:
    """Files whose working-tree state differs from the index: edited, deleted, untracked."""
    changed = _names(_git(root, "diff", "--name-only", "-z", "--relative"))
    untracked = _names(_git(root, "ls-files", "--others", "--exclude-standard", "-z"))
    return set(changed) | set(untracked)


def identical_to_index(root: Path, files: Sequence[str]) -> set[str]:
    """The files whose working-tree bytes are exactly the staged blob's."""
    if not files:
        return set()
    algo = _git(root, "rev-parse", "--show-object-format").decode().strip() or "sha1"
    staged: dict[str, str] = {}
    for entry in _names(_git(root, "ls-files", "-s", "-z", "--", *files)):
        meta, _, name = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[2] == "0":  # stage 0: no merge conflict
            staged[name] = parts[1]
    same = set()
    for name, blob in staged.items():
        path = root / name
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest = hashlib.new(algo, b"blob %d\0" % len(data) + data).hexdigest()
        if digest == blob:
            same.add(name)
    return same


@contextlib.contextmanager
def checkout(root: Path) -> Iterator[Path]:
    """The project as staged, in a temporary tree; yields the project root inside it."""
    top = Path(_git(root, "rev-parse", "--show-toplevel").decode().strip())
    sub = root.resolve().relative_to(top.resolve())
    tmp = Path(tempfile.mkdtemp(prefix="devloop-staged-"))
    try:
        tracked = _git(root, "ls-files", "-z")
        _git(root, "checkout-index", "-z", "--stdin", f"--prefix={tmp}/", stdin=tracked)
        project = tmp / sub
        project.mkdir(parents=True, exist_ok=True)
        for venv in VENVS:  # never tracked, but the checks run the project's tools from it
            if (root / venv).is_dir() and not os.path.lexists(project / venv):
                (project / venv).symlink_to(root.resolve() / venv)
        yield project
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
