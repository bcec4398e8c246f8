"""Recursive inotify: walk with pruning, new directories, moves, overflow -> rescan.

Ignored directories never get a watch: the rules are applied while walking.
Besides the watches, the watcher keeps a snapshot (mtime, size) of every file it
can see, so that an event queue overflow is answered by a rescan that finds
exactly what changed, and so that "the whole project" is known without a walk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

from inotify_simple import INotify, flags, parse_events

from devloop.ignore import EXCLUDE, IgnoreRules

log = logging.getLogger(__name__)

DIR_MASK = (
    flags.CLOSE_WRITE
    | flags.CREATE
    | flags.DELETE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    | flags.ONLYDIR
    | flags.DONT_FOLLOW
    | flags.EXCL_UNLINK
)
READ_BYTES = 16 * 1024  # of events per callback (the kernel returns whole events): ~500
SLICE_S = 0.002  # a walk yields to the event loop this often: an event waits for a slice or two

Stamp = int  # hash((mtime_ns, size)): one small int per file keeps 100k files in a few MB


class WatchLimitError(Exception):
    """inotify_add_watch said ENOSPC: fs.inotify.max_user_watches is too low for this project."""

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self.limit = max_user_watches()
        super().__init__(watch_limit_message(needed, self.limit))


def max_user_watches() -> int:
    """The limit in force: the sysctl, or a lower one set for this user namespace."""
    limits = []
    for path in ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches"):
        with contextlib.suppress(OSError, ValueError):
            limits.append(int(Path(path).read_text()))
    return min(limits, default=-1)


def watch_limit_message(needed: int, limit: int) -> str:
    want = max(needed * 2, limit * 2, 524288)
    return (
        f"inotify watch limit reached: fs.inotify.max_user_watches is {limit} for this user "
        f"(shared by all its processes) and this project needs {needed} watches; raise it with "
        f"'sudo sysctl fs.inotify.max_user_watches={want}' "
        "(persist it in /etc/sysctl.d/90-devloop.conf)"
    )


def _join(reldir: str, name: str) -> str:
    return f"{reldir}/{name}" if reldir else name


def scan_dir(root: str, reldir: str, rules: IgnoreRules, *, files: bool,
             newer: tuple[int, int, set[str]] | None = None
             ) -> tuple[list[str], dict[str, Stamp]]:
    """One directory: its subdirectories and (with files=True) its files, ignored ones left out.

    The directory's own .gitignore (read only where there is one) applies to its entries.
    newer=(lo, hi, found): files modified (mtime) from lo to hi ns are added to found.
    """
    stamps: dict[str, Stamp] = {}
    try:
        with os.scandir(f"{root}/{reldir}" if reldir else root) as it:
            entries = list(it)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            log.warning("cannot list %s: %s", reldir or ".", exc.strerror)
        return [], stamps
    dirs: list[str] = []
    others: list[os.DirEntry[str]] = []
    has_gitignore = False
    for entry in entries:  # the hot loop of start-up: 100,000 entries and more
        try:
            if entry.is_dir(follow_symlinks=False):  # d_type: no system call
                dirs.append(entry.name)
                continue
        except OSError:
            continue  # gone since listed
        if files:
            others.append(entry)
        elif entry.name == ".gitignore":
            has_gitignore = True
    has_gitignore = has_gitignore or any(e.name == ".gitignore" for e in others)
    rules.load_dir(reldir, present=has_gitignore)  # before matching this directory's entries
    prefix = f"{reldir}/" if reldir else ""
    subdirs = [prefix + n for n in dirs if not rules.is_ignored(prefix + n, True)]
    for entry in others:
        if rules.is_ignored(prefix + entry.name, False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        stamps[entry.name] = hash((st.st_mtime_ns, st.st_size))
        if newer is not None and newer[0] <= st.st_mtime_ns <= newer[1]:
            newer[2].add(prefix + entry.name)
    return subdirs, stamps


def scan_files(root: Path, rules: IgnoreRules) -> Iterator[str]:
    """Every file that is not ignored, without watching anything (for `devloop run`)."""
    stack = [""]
    while stack:
        reldir = stack.pop()
        subdirs, stamps = scan_dir(str(root), reldir, rules, files=True)
        stack.extend(subdirs)
        yield from (_join(reldir, name) for name in stamps)


_NO_FILES = bytes(4)  # a packed directory without files (shared)


class Snapshot:
    """The stamp of every visible file, by directory.

    A directory not changed since it was walked is kept packed in one bytes object:
    its file count, its stamps, its names (100,000 files: about 3 MB, against about 15
    for a dict of str -> int, and 4 for a string and an array per directory). It is
    unpacked on its first change.
    """

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, Stamp] | bytes] = {}

    def dirs(self) -> list[str]:
        return list(self._dirs)

    def get(self, reldir: str) -> dict[str, Stamp]:
        entry = self._dirs.get(reldir)
        if entry is None:
            return {}
        if isinstance(entry, dict):
            return entry
        count = int.from_bytes(entry[:4], "little")
        if not count:
            return {}
        stamps = array("q")
        stamps.frombytes(memoryview(entry)[4:4 + 8 * count])
        names = entry[4 + 8 * count:].decode("utf-8", "surrogateescape").split("\0")
        return dict(zip(names, stamps, strict=True))

    def put(self, reldir: str, files: dict[str, Stamp]) -> None:
        if not files:
            self._dirs[reldir] = _NO_FILES
            return
        self._dirs[reldir] = (len(files).to_bytes(4, "little")
                              + array("q", files.values()).tobytes()
                              + "\0".join(files).encode("utf-8", "surrogateescape"))

    def update(self, reldir: str, name: str, stamp: Stamp | None) -> None:
        files = self.get(reldir)
        self._dirs[reldir] = files
        if stamp is None:
            files.pop(name, None)
        else:
            files[name] = stamp

    def pop(self, reldir: str) -> list[str]:
        """Forget the directory; returns its files' names."""
        names = list(self.get(reldir))
        self._dirs.pop(reldir, None)
        return names

    def files(self) -> Iterator[str]:
        for reldir in list(self._dirs):
            for name in self.get(reldir):
                yield _join(reldir, name)


class Watcher:
    """Owns the inotify fd. Call `walk_all()` to start, then feed it with `read_events()`."""

    def __init__(self, root: Path, rules: IgnoreRules) -> None:
        self.root = root
        self._root = str(root)  # the walk joins strings: pathlib is too slow for 100k files
        self.rules = rules
        self.inotify = INotify(nonblocking=True)
        self._wd_dir: dict[int, str] = {}
        self._dir_wd: dict[str, int] = {}
        self.snapshot = Snapshot()
        self.rescans = 0
        self.overflows = 0  # rescans that answered an inotify queue overflow
        self._overflowed = False  # an overflow not yet answered by a rescan
        self.root_gone = False
        self.unwatched: set[str] = set()  # directories we could not watch (limit reached)
        self._unsnapped: set[str] = set()  # watched, files not yet in the snapshot
        self._children: dict[str, set[str]] = {}  # watched directory -> its watched subdirs
        self.new_dirs: list[str] = []  # created or moved in, to walk (`walk_new_dirs`)
        self._exclude_wd: int | None = None  # .git/info: the walk never enters .git

    # -- public ---------------------------------------------------------------------
    def fileno(self) -> int:
        return int(self.inotify.fileno())

    @property
    def watch_count(self) -> int:
        return len(self._wd_dir)

    @property
    def problem(self) -> str | None:
        if self.unwatched:
            return watch_limit_message(self.watch_count + len(self.unwatched), max_user_watches())
        return None

    def close(self) -> None:
        self.inotify.close()

    def all_files(self) -> Iterator[str]:
        return self.snapshot.files()

    def walk_all(self, strict: bool = True) -> Iterator[int]:
        """The initial walk, as slices: yields the number of directories walked so far.

        It places the watches and lists directories only; `fill_snapshot` then stats
        the files, after READY. With strict=True an ENOSPC ends the walk in
        WatchLimitError, after counting how many directories the project has, never
        leaving a silent half-watch.
        """
        self._watch_exclude()
        yield from self._walk("", None, strict=strict, files=False)

    def fill_snapshot(self, since_ns: int, until_ns: int, changes: set[str]) -> Iterator[int]:
        """Stat the files of the directories the initial walk only listed, in slices.

        A file modified from `since_ns` (the walk's start) to `until_ns` (its end) is
        added to `changes`: it may have changed before its directory was watched. A later
        change has its event (or, lost to an overflow, the rescan finds it): counting it
        here too would run its check twice.
        """
        done = 0
        slice_end = time.perf_counter() + SLICE_S
        while self._unsnapped:
            reldir = self._unsnapped.pop()
            if reldir in self._dir_wd:
                self.snapshot.put(reldir, scan_dir(self._root, reldir, self.rules, files=True,
                                                   newer=(since_ns, until_ns, changes))[1])
            done += 1
            if time.perf_counter() >= slice_end:
                yield done
                slice_end = time.perf_counter() + SLICE_S
        yield done

    def rescan(self, changes: set[str]) -> Iterator[int]:
        """Compare the tree with the snapshot, adding the differences to `changes`."""
        self.rescans += 1
        if self._overflowed:
            self._overflowed = False
            self.overflows += 1
        self._watch_exclude()
        before = set(self._dir_wd)  # not those watched while the rescan runs
        visited: set[str] = set()
        yield from self._walk("", changes, visited=visited)
        for reldir in before - visited:
            if reldir in self._dir_wd:
                changes |= self._drop_tree(reldir)

    def retry_unwatched(self) -> None:
        """Queue the directories the watch limit left out, to try watching them again
        (they stay in `unwatched`, the reported problem, until they are watched)."""
        self.new_dirs.extend(d for d in sorted(self.unwatched) if d not in self.new_dirs)

    def walk_new_dirs(self, changes: set[str]) -> Iterator[int]:
        """Watch, then scan, the directories created or moved in: their files are changes."""
        while self.new_dirs:
            rel = self.new_dirs.pop(0)
            if self.rules.is_ignored(rel, True):
                self._settled(rel)  # ignored since: no watch wanted
            else:
                yield from self._walk(rel, changes)

    def read_events(self, drain: bool = False) -> tuple[set[str], bool]:
        """Read the inotify fd: (changed paths, whether the queue overflowed).

        READ_BYTES at most, so that a storm's backlog is read over several turns of the
        loop; drain=True reads everything queued.
        """
        changes: set[str] = set()
        overflow = False
        chunks = []
        while True:
            try:
                chunk = os.read(self.fileno(), READ_BYTES)
            except BlockingIOError:
                break
            chunks.append(chunk)
            if not (drain and chunk):
                break
        for ev in parse_events(b"".join(chunks)):
            mask = ev.mask
            if mask & flags.Q_OVERFLOW:
                overflow = self._overflowed = True
                continue
            if ev.wd == self._exclude_wd:
                if mask & flags.IGNORED:
                    self._exclude_wd = None
                elif ev.name == "exclude":
                    changes.add(EXCLUDE)  # the daemon reloads the rules
                continue
            reldir = self._wd_dir.get(ev.wd)
            if reldir is None:
                continue
            if mask & flags.IGNORED:
                self._forget_wd(ev.wd)
                continue
            if mask & (flags.DELETE_SELF | flags.MOVE_SELF):
                if reldir == "":
                    self.root_gone = True
                continue
            rel = _join(reldir, ev.name)
            if mask & flags.ISDIR:
                if self.rules.is_ignored(rel, True):
                    continue
                if mask & (flags.DELETE | flags.MOVED_FROM):
                    changes |= self._drop_tree(rel)
                elif mask & (flags.CREATE | flags.MOVED_TO):
                    # walked in slices off this callback: watched first, then scanned, so
                    # files written in the same instant are found
                    self.new_dirs.append(rel)
                continue
            if ev.name == ".gitignore":
                changes.add(rel)  # the daemon reloads the rules
                continue
            if self.rules.is_ignored(rel, False):
                continue
            st = self._stamp(reldir, ev.name)
            if (mask & flags.CREATE and st is not None and stat.S_ISREG(st.st_mode)
                    and st.st_nlink == 1):
                # a new file being written: its IN_CLOSE_WRITE follows, and one save must
                # be one change (a hard link, nlink > 1, gets no close: it counts now)
                continue
            changes.add(rel)
        return changes, overflow

    # -- internals ------------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def _stamp(self, reldir: str, name: str) -> os.stat_result | None:
        try:
            st = os.lstat(self._abs(_join(reldir, name)))
        except OSError:
            self.snapshot.update(reldir, name, None)
            return None
        stamp = None if stat.S_ISDIR(st.st_mode) else hash((st.st_mtime_ns, st.st_size))
        self.snapshot.update(reldir, name, stamp)
        return st

    def _watch_exclude(self) -> None:
        """A watch of its own for .git/info (.git has too much churn to watch it all)."""
        if self._exclude_wd is None:
            with contextlib.suppress(OSError):  # no .git/info (yet), or no watch to spare
                self._exclude_wd = int(self.inotify.add_watch(
                    self._abs(EXCLUDE.rpartition("/")[0]), DIR_MASK))

    def _add_watch(self, reldir: str) -> int | None:
        path = self._abs(reldir)
        try:
            wd = int(self.inotify.add_watch(path, DIR_MASK))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch %s: %s", path, exc.strerror)
            self._settled(reldir)  # gone: nothing left to watch there
            return None
        self._settled(reldir)
        old = self._dir_wd.get(reldir)
        if old is not None and old != wd:
            self._wd_dir.pop(old, None)
        self._wd_dir[wd] = reldir
        self._dir_wd[reldir] = wd
        if reldir:
            self._children.setdefault(reldir.rpartition("/")[0], set()).add(reldir)
        return wd

    def _walk(
        self,
        top: str,
        changes: set[str] | None,
        *,
        strict: bool = False,
        visited: set[str] | None = None,
        files: bool = True,
    ) -> Iterator[int]:
        """Watch top and below; snapshot their files, adding differences to `changes`."""
        stack = [top]
        walked = 0
        slice_end = time.perf_counter() + SLICE_S
        counting = False  # strict, after an ENOSPC: only counting what the project needs
        needed = 0
        while stack:
            reldir = stack.pop()
            if counting:
                needed += 1
            else:
                # not strict, every directory is tried, even after an ENOSPC: one already
                # watched keeps its watch (the kernel updates it, no new one is needed),
                # and a watch freed meanwhile is used
                try:
                    if self._add_watch(reldir) is None:
                        continue  # vanished, or not a directory any more
                except OSError:  # ENOSPC: the watch limit
                    if not strict:
                        self._cannot_watch(reldir, changes)
                        continue
                    counting = True
                    needed += 1
            if visited is not None:
                visited.add(reldir)
            subdirs, stamps = scan_dir(self._root, reldir, self.rules, files=files)
            stack.extend(subdirs)
            if counting:
                pass
            elif not files:
                self._unsnapped.add(reldir)
            else:
                self._unsnapped.discard(reldir)
                if changes is not None:
                    old = self.snapshot.get(reldir)
                    changes.update(_join(reldir, n) for n, st in stamps.items()
                                   if old.get(n) != st)
                    changes.update(_join(reldir, n) for n in old.keys() - stamps.keys())
                self.snapshot.put(reldir, stamps)
            walked += 1
            if time.perf_counter() >= slice_end:
                yield walked
                slice_end = time.perf_counter() + SLICE_S
        if counting:
            raise WatchLimitError(self.watch_count + needed)
        yield walked

    def _settled(self, reldir: str) -> None:
        """reldir is watched now, or needs no watch: it leaves `unwatched`."""
        if self.unwatched:
            self.unwatched.discard(reldir)
            if not self.unwatched:
                log.info("every directory is watched again")

    def _cannot_watch(self, reldir: str, changes: set[str] | None) -> None:
        """The watch limit left reldir out: it and what is below wait in `unwatched`."""
        if not self.unwatched:  # log entering the state, once
            log.error("%s", watch_limit_message(self.watch_count + 1, max_user_watches()))
        if reldir in self._dir_wd:
            # watched before, yet a new watch was needed: a new directory under the same
            # name (its old one went in an overflow); what was known below it is gone
            gone = self._drop_tree(reldir)
            if changes is not None:
                changes |= gone
        self.unwatched.add(reldir)

    def _drop_tree(self, reldir: str) -> set[str]:
        """Forget reldir and below (deleted or moved away): its files count as changed."""
        gone: set[str] = set()
        if reldir:
            self._children.get(reldir.rpartition("/")[0], set()).discard(reldir)
        stack = [reldir]
        while stack:  # only this subtree: a big `rm -rf` stays linear
            d = stack.pop()
            stack.extend(self._children.pop(d, ()))
            gone.update(_join(d, name) for name in self.snapshot.pop(d))
            self._unsnapped.discard(d)
            wd = self._dir_wd.pop(d, None)
            if wd is not None:
                self._wd_dir.pop(wd, None)
                with contextlib.suppress(OSError):  # already gone with its directory
                    self.inotify.rm_watch(wd)
        if self.unwatched:
            prefix = reldir + "/"
            self.unwatched = {d for d in self.unwatched
                              if not (d == reldir or d.startswith(prefix))}
        self.rules.forget_dir(reldir)
        return gone

    def _forget_wd(self, wd: int) -> None:
        reldir = self._wd_dir.pop(wd, None)
        if reldir is not None and self._dir_wd.get(reldir) == wd:
            del self._dir_wd[reldir]
            if reldir == "":
                self.root_gone = True
