"""Which paths DevLoop never looks at: built-in rules, every .gitignore, .git/info/exclude, config.

The watcher asks while it walks, so an ignored directory never gets an inotify watch.
Paths are relative to the project root, with '/' separators.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pathspec

log = logging.getLogger(__name__)

BUILTIN_IGNORES: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    ".devloop/",
    "__pycache__/",
    ".venv/",
    "venv/",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".tox/",
    ".nox/",
    ".hypothesis/",
    "*.egg-info/",
    "*.pyc",
    # editor temporaries: vim, emacs, JetBrains
    "*.swp",
    "*.swx",
    "*~",
    ".#*",
    "4913",
    "*___jb_tmp___",
    "*___jb_old___",
)


def compile_spec(lines: Iterable[str]) -> pathspec.GitIgnoreSpec:
    """pathspec with its fastest installed backend (re2: one match for all patterns)."""
    return pathspec.GitIgnoreSpec.from_lines(lines, backend="best")


def matchable(path: str) -> str:
    """A name that is not UTF-8 (surrogate escapes) cannot reach re2; no pattern can name
    those bytes anyway, so it is matched with U+FFFD in their place."""
    if path.isascii():
        return path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _tolerant_spec(path: Path, lines: list[str]) -> pathspec.GitIgnoreSpec:
    """A project's .gitignore is not ours to reject: a bad line is skipped and logged."""
    try:
        return compile_spec(lines)
    except Exception:  # pathspec and its backends raise several types
        good = []
        for line in lines:
            try:
                compile_spec([line])
            except Exception:
                log.warning("%s: ignoring the pattern %r: not a valid gitignore pattern",
                            path, line)
            else:
                good.append(line)
        return compile_spec(good)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


class IgnoreRules:
    """Gitignore semantics per directory: a .gitignore applies below the directory holding it."""

    def __init__(self, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        base = [*BUILTIN_IGNORES, *_read_lines(root / ".git" / "info" / "exclude"), *extra]
        self._base = compile_spec(base)
        self._by_dir: dict[str, pathspec.GitIgnoreSpec] = {}

    def load_dir(self, reldir: str, present: bool = True) -> None:
        """Read reldir/.gitignore, before matching reldir's entries; present=False: it has none."""
        if not present:
            self._by_dir.pop(reldir, None)
            return
        path = Path(f"{self.root}/{reldir}/.gitignore" if reldir else f"{self.root}/.gitignore")
        lines = _read_lines(path)
        if lines:
            self._by_dir[reldir] = _tolerant_spec(path, lines)
        else:
            self._by_dir.pop(reldir, None)

    def forget_dir(self, reldir: str) -> None:
        """Drop the rules of reldir and everything below it (it was deleted or moved away)."""
        prefix = reldir + "/"
        for d in [d for d in self._by_dir if d == reldir or d.startswith(prefix)]:
            del self._by_dir[d]

    def is_ignored(self, relpath: str, is_dir: bool) -> bool:
        relpath = matchable(relpath)
        probe = relpath + "/" if is_dir else relpath
        if self._base.match_file(probe):
            return True
        if not self._by_dir:
            return False
        spec = self._by_dir.get("")
        if spec is not None and spec.match_file(probe):
            return True
        parts = relpath.split("/")
        for i in range(1, len(parts)):
            spec = self._by_dir.get("/".join(parts[:i]))
            if spec is not None and spec.match_file("/".join(parts[i:]) + ("/" if is_dir else "")):
                return True
        return False
