"""Which paths DevLoop never looks at: built-in rules, every .gitignore, .git/info/exclude, config.

The watcher asks while it walks, so an ignored directory never gets an inotify watch.
Paths are relative to the project root, with '/' separators.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path

import pathspec

log = logging.getLogger(__name__)

EXCLUDE = ".git/info/exclude"  # the repository's own ignore rules, outside any .gitignore
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
    """pathspec with its fastest installed backend (re2: one match for all patterns).

    re2 costs the daemon 2.7 MB of VmRSS (HIDE=re2 bench/daemon_rss.sh) and saves 6 us per
    `is_ignored` (3 against 9, bench/ignore_cost.py): 0.6 s of CPU per walk of 100,000
    directories, 6 s per listing of 1,000,000 files."""
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
        self._forced = compile_spec([*BUILTIN_IGNORES, *extra])
        exclude = _read_lines(root / EXCLUDE)
        self._global_lines = (extra, tuple(exclude))  # what `same_for` compares
        self._exclude = _tolerant_spec(root / EXCLUDE, exclude) if exclude else None
        # per directory: its .gitignore, and whether it has `!` lines (without them a match
        # is the whole verdict, and `match_file` is faster than `check_file`)
        self._by_dir: dict[str, tuple[pathspec.GitIgnoreSpec, bool]] = {}
        self._lines: dict[str, tuple[str, ...]] = {}  # each .gitignore as read

    def load_dir(self, reldir: str, present: bool = True) -> None:
        """Read reldir/.gitignore, before matching reldir's entries; present=False: it has none."""
        if not present:
            self._by_dir.pop(reldir, None)
            self._lines.pop(reldir, None)
            return
        path = Path(f"{self.root}/{reldir}/.gitignore" if reldir else f"{self.root}/.gitignore")
        lines = _read_lines(path)
        if lines:
            negates = any(line.startswith("!") for line in lines)
            self._by_dir[reldir] = (_tolerant_spec(path, lines), negates)
            self._lines[reldir] = tuple(lines)
        else:
            self._by_dir.pop(reldir, None)
            self._lines.pop(reldir, None)

    def copy(self) -> IgnoreRules:
        """The rules as they are, apart from later loads: a rescan reads each .gitignore it
        passes anew, and what the rules hid before is compared with this."""
        other = copy.copy(self)
        other._by_dir = dict(self._by_dir)
        other._lines = dict(self._lines)
        return other

    def forget_dir(self, reldir: str) -> None:
        """Drop the rules of reldir and everything below it (it was deleted or moved away)."""
        prefix = reldir + "/"
        for d in [d for d in self._by_dir if d == reldir or d.startswith(prefix)]:
            del self._by_dir[d]
            self._lines.pop(d, None)

    def same_for(self, other: IgnoreRules, reldir: str) -> bool:
        """Whether both give each file in reldir the same verdict: the same config and
        exclude rules, and the same .gitignore in reldir and in every directory above
        (so that a reload re-matches only the files below the .gitignore that changed)."""
        if self._global_lines != other._global_lines:
            return False
        d: str | None = reldir
        while d is not None:
            if self._lines.get(d) != other._lines.get(d):
                return False
            d = d.rpartition("/")[0] if d else None
        return True

    def is_ignored(self, relpath: str, is_dir: bool) -> bool:
        """Git's precedence: the deepest .gitignore that has a say wins (a `!pattern` there
        re-includes), then .git/info/exclude; the built-in rules and the config's `ignore`
        hold whatever the .gitignore files say."""
        relpath = matchable(relpath)
        suffix = "/" if is_dir else ""
        if self._forced.match_file(relpath + suffix):
            return True
        if self._by_dir:
            d = relpath
            while d:  # the directories holding it, deepest first, up to the root ("")
                d = d.rpartition("/")[0]
                found = self._by_dir.get(d)
                if found is not None:
                    spec, negates = found
                    below = (relpath[len(d) + 1:] if d else relpath) + suffix
                    if not negates:
                        if spec.match_file(below):
                            return True
                        continue
                    verdict = spec.check_file(below).include
                    if verdict is not None:
                        return verdict
        return self._exclude is not None and self._exclude.match_file(relpath + suffix)
