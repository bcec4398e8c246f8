"""Recursive inotify: walk with pruning, new directories, moves, overflow -> rescan.

Ignored directories never get a watch: the rules are applied while walking. The
watcher keeps no state per file (for a million files that would be tens of MB): what
changed while no event could tell (during the initial walk, before a directory had its
watch, or in events lost to a queue overflow) is found by the files' ctime, which every
write, rename, link and chmod sets to the present and which no program can set back.
A directory that may have lost files no one named (moved out of the tree, or lost in an
overflow) is reported as a change "dir/" (see `dir_mark`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
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
SHORT_READ = READ_BYTES - 512  # a read this short emptied the queue (an event is < 300 B)
SLICE_S = 0.002  # a walk yields to the event loop this often: an event waits for a slice or two
CTIME_SLACK_NS = 50_000_000  # file times come from a coarse clock (a tick behind): a margin


def dir_mark(reldir: str) -> str:
    """The change "reldir/": files below reldir may be gone that no event named."""
    return f"{reldir}/"


def is_dir_mark(change: str) -> bool:
    return change.endswith("/")


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


def _list(path: str, reldir: str, since_ns: int | None = None
          ) -> tuple[list[str], list[str], list[str]]:
    """A directory's subdirectory names, its other names, and of those the ones whose
    ctime is since_ns or later (nothing when the directory is gone).

    Listed through a descriptor: an entry's stat is then an fstatat of its bare name,
    not a lookup of its whole path again.
    """
    dirs: list[str] = []
    others: list[str] = []
    recent: list[str] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            log.warning("cannot list %s: %s", reldir or ".", exc.strerror)
        return dirs, others, recent
    try:
        with os.scandir(fd) as it:
            entries = list(it)
        for entry in entries:  # the hot loop of start-up: a million entries and more
            try:
                if entry.is_dir(follow_symlinks=False):  # d_type: no system call
                    dirs.append(entry.name)
                    continue
                if since_ns is not None and (
                        entry.stat(follow_symlinks=False).st_ctime_ns >= since_ns):
                    recent.append(entry.name)
            except OSError:
                continue  # gone since listed: its deletion has its event, or a mark
            others.append(entry.name)
    except OSError as exc:
        log.warning("cannot list %s: %s", reldir or ".", exc.strerror)
    finally:
        os.close(fd)
    return dirs, others, recent


def scan_dir(root: str, reldir: str, rules: IgnoreRules) -> tuple[list[str], list[str]]:
    """One directory: its subdirectories and its files (relative paths), ignored ones left
    out; its own .gitignore (read only where there is one) applies to its entries."""
    dirs, others, _ = _list(f"{root}/{reldir}" if reldir else root, reldir)
    return _visible(rules, reldir, dirs, others), [
        p for p in (_join(reldir, n) for n in others) if not rules.is_ignored(p, False)]


def _visible(rules: IgnoreRules, reldir: str, dirs: list[str], others: list[str]) -> list[str]:
    """Load reldir's .gitignore, then: its subdirectories that are not ignored."""
    rules.load_dir(reldir, present=".gitignore" in others)
    paths = (_join(reldir, n) for n in dirs)
    return [p for p in paths if not rules.is_ignored(p, True)]


def scan_files(root: Path, rules: IgnoreRules) -> Iterator[str]:
    """Every file that is not ignored, without watching anything (whole-project runs)."""
    stack = [""]
    while stack:
        subdirs, files = scan_dir(str(root), stack.pop(), rules)
        stack.extend(subdirs)
        yield from files


class Watcher:
    """Owns the inotify fd. Call `walk_all()` to start, then feed it with `read_events()`.

    Per watched directory, two table entries (wd -> path, path -> wd): about 190 bytes.
    """

    def __init__(self, root: Path, rules: IgnoreRules) -> None:
        self.root = root
        self._root = str(root)  # the walk joins strings: pathlib is too slow for 100k dirs
        self.rules = rules
        self.inotify = INotify(nonblocking=True)
        self._wd_dir: dict[int, str] = {}
        self._dir_wd: dict[str, int] = {}
        self.rescans = 0
        self.overflows = 0  # rescans that answered an inotify queue overflow
        self._overflowed = False  # an overflow not yet answered by a rescan
        self._empty_at_ns = 0  # when the event queue was last seen empty: nothing lost before
        self._lost_since_ns = 0  # an overflow lost events from then on
        self.root_gone = False
        self.unwatched: set[str] = set()  # directories we could not watch (limit reached)
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

    def walk_all(self, changes: set[str], since_ns: int | None) -> Iterator[int]:
        """The initial walk, as slices: yields the number of directories walked so far.

        since_ns (the walk's start): a file whose ctime is later is added to `changes`, as
        it may have changed before its directory was watched; None: the caller needs no
        such changes (every check runs over the whole project at start), so no file is
        stat'ed. An ENOSPC ends the walk in WatchLimitError, after counting how many
        directories the project has, never leaving a silent half-watch.
        """
        self._empty_at_ns = since_ns if since_ns is not None else time.time_ns()
        self._watch_exclude()
        yield from self._walk("", changes, strict=True, since_ns=since_ns, fresh=False)

    def rescan(self, changes: set[str], old_rules: IgnoreRules | None = None) -> Iterator[int]:
        """Walk the tree again, adding to `changes` what events did not tell.

        After an overflow: files whose ctime is later than the last moment the event
        queue was seen empty (.git/info/exclude too), and a mark for each directory whose
        entries changed since.
        Neither an overflow nor a reload (old_rules): the daemon lost a batch of events
        to an error, found the same way as after an overflow.
        Files the old rules hid and the rules do not are changes: old_rules, a reload's
        (the rules changed), else the rules as they were before this rescan, which reads
        each .gitignore anew (one edited meanwhile un-hides files too). A directory not
        watched before is new: all its files are changes.
        """
        self.rescans += 1
        reload = old_rules is not None
        if old_rules is None:  # an edit of a .gitignore may be among what it finds
            old_rules = self.rules.copy()
        since_ns = None
        if self._overflowed:
            self._overflowed = False
            self.overflows += 1
            since_ns = self._lost_since_ns
        elif not reload:  # events were lost to an error reading them
            since_ns = self._empty_at_ns - CTIME_SLACK_NS
        self._watch_exclude()
        if since_ns is not None:  # outside the walk: its events may have been lost too
            with contextlib.suppress(OSError):
                if os.stat(self._abs(EXCLUDE)).st_ctime_ns >= since_ns:
                    changes.add(EXCLUDE)  # the daemon reloads the rules
        before = set(self._dir_wd)  # not those watched while the rescan runs
        visited: set[str] = set()
        yield from self._walk("", changes, visited=visited, since_ns=since_ns,
                              old_rules=old_rules)
        for reldir in before - visited:
            if reldir in self._dir_wd:
                self._drop(reldir)
                if not os.path.lexists(self._abs(reldir)):  # gone, not just ignored now
                    changes.add(dir_mark(reldir))

    def retry_unwatched(self) -> None:
        """Queue the directories the watch limit left out, to try watching them again
        (they stay in `unwatched`, the reported problem, until they are watched)."""
        self.new_dirs.extend(d for d in sorted(self.unwatched) if d not in self.new_dirs)

    def walk_new_dirs(self, changes: set[str]) -> Iterator[int]:
        """Watch, then list, the directories created or moved in: their files are changes."""
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
        empty_at_ns = None  # the queue held nothing more at this time
        while True:
            asked_ns = time.time_ns()
            try:
                chunk = os.read(self.fileno(), READ_BYTES)
            except BlockingIOError:
                empty_at_ns = asked_ns
                break
            chunks.append(chunk)
            if len(chunk) < SHORT_READ:
                empty_at_ns = asked_ns
            if not (drain and chunk):
                break
        moved_away: list[str] = []
        for ev in parse_events(b"".join(chunks)):
            mask = ev.mask
            if mask & flags.Q_OVERFLOW:
                if not self._overflowed:
                    self._lost_since_ns = self._empty_at_ns - CTIME_SLACK_NS
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
                if mask & flags.DELETE:
                    # its files had their own events, and each watch below its IN_IGNORED
                    self._drop(rel, rm_watch=False)
                    self._forget_below(rel)
                elif mask & flags.MOVED_FROM:
                    moved_away.append(rel)
                    changes.add(dir_mark(rel))
                elif mask & (flags.CREATE | flags.MOVED_TO):
                    # walked in slices off this callback: watched first, then listed, so
                    # files written in the same instant are found
                    self.new_dirs.append(rel)
                continue
            if ev.name == ".gitignore":
                changes.add(rel)  # the daemon reloads the rules
                continue
            if self.rules.is_ignored(rel, False):
                continue
            if mask & flags.CREATE:
                try:
                    st = os.lstat(self._abs(rel))
                except OSError:
                    st = None
                if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    # a new file being written: its IN_CLOSE_WRITE follows, and one save
                    # must be one change (a hard link, nlink > 1, gets no close: it counts now)
                    continue
            changes.add(rel)
        if moved_away:
            self._drop_trees(moved_away)  # one pass over the tables for a whole batch
        if empty_at_ns is not None and not overflow:  # (an overflow's events went before)
            self._empty_at_ns = empty_at_ns
        return changes, overflow

    # -- internals ------------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

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
        if old is not None and old != wd and self._wd_dir.get(old) == reldir:
            # the watch of the directory this name held before: unless a walk found it
            # under its new name, it is out of the tree (or gone) and watches nothing of ours
            del self._wd_dir[old]
            with contextlib.suppress(OSError):
                self.inotify.rm_watch(old)
        self._wd_dir[wd] = reldir
        self._dir_wd[reldir] = wd
        return wd

    def _walk(
        self,
        top: str,
        changes: set[str],
        *,
        strict: bool = False,
        visited: set[str] | None = None,
        since_ns: int | None = None,
        old_rules: IgnoreRules | None = None,
        fresh: bool = True,
    ) -> Iterator[int]:
        """Watch top and below, adding to `changes` the files of directories new to us
        (fresh=True), those with a ctime from since_ns on, and those old_rules hid."""
        stack = [top]
        walked = 0
        slice_end = time.perf_counter() + SLICE_S
        counting = False  # strict, after an ENOSPC: only counting what the project needs
        needed = 0
        rules = self.rules
        while stack:
            reldir = stack.pop()
            known_wd = self._dir_wd.get(reldir)
            known = known_wd is not None
            if counting:
                needed += 1
            else:
                # not strict, every directory is tried, even after an ENOSPC: one already
                # watched keeps its watch (the kernel updates it, no new one is needed),
                # and a watch freed meanwhile is used
                try:
                    wd = self._add_watch(reldir)
                    if wd is None:
                        continue  # vanished, or not a directory any more
                    if known and wd != known_wd:
                        # another directory under a known name (the old one moved or went
                        # in an overflow): its files are new, the old one's may be gone
                        known = False
                        changes.add(dir_mark(reldir))
                except OSError:  # ENOSPC: the watch limit
                    if not strict:
                        self._cannot_watch(reldir, changes)
                        continue
                    counting = True
                    needed += 1
            if visited is not None:
                visited.add(reldir)
            new = fresh and not known
            dirs, others, recent = _list(self._abs(reldir), reldir,
                                         None if counting or new else since_ns)
            stack.extend(_visible(rules, reldir, dirs, others))
            if not counting and others:
                self._changed_files(reldir, others if new else recent, others, changes,
                                    old_rules=None if new else old_rules)
            if not counting and known and since_ns is not None:
                with contextlib.suppress(OSError):  # entries added, renamed or removed
                    if os.stat(self._abs(reldir)).st_ctime_ns >= since_ns:
                        changes.add(dir_mark(reldir))
            walked += 1
            if time.perf_counter() >= slice_end:
                yield walked
                slice_end = time.perf_counter() + SLICE_S
        if counting:
            raise WatchLimitError(self.watch_count + needed)
        yield walked

    def _changed_files(self, reldir: str, names: list[str], others: list[str],
                       changes: set[str], *, old_rules: IgnoreRules | None) -> None:
        """Of reldir's files `names`, and (old_rules given) those of `others` the old rules
        hid, the ones the rules do not ignore are changes. The rules are matched last:
        they cost more than a stat, and most files are no candidates."""
        if old_rules is not None and not old_rules.same_for(self.rules, reldir):
            names = names + [n for n in others if old_rules.is_ignored(_join(reldir, n), False)]
        for name in names:
            rel = _join(reldir, name)
            if not self.rules.is_ignored(rel, False):
                changes.add(rel)

    def _settled(self, reldir: str) -> None:
        """reldir is watched now, or needs no watch: it leaves `unwatched`."""
        if self.unwatched:
            self.unwatched.discard(reldir)
            if not self.unwatched:
                log.info("every directory is watched again")

    def _cannot_watch(self, reldir: str, changes: set[str]) -> None:
        """The watch limit left reldir out: it and what is below wait in `unwatched`."""
        if not self.unwatched:  # log entering the state, once
            log.error("%s", watch_limit_message(self.watch_count + 1, max_user_watches()))
        if reldir in self._dir_wd:
            # watched before, yet a new watch was needed: a new directory under the same
            # name (its old one went in an overflow); what was below it is gone
            self._drop_trees([reldir])
            changes.add(dir_mark(reldir))
        self.unwatched.add(reldir)

    def _drop(self, reldir: str, *, rm_watch: bool = True) -> None:
        wd = self._dir_wd.pop(reldir, None)
        # not a watch the directory took along to a new name, found there by a rescan
        if wd is not None and self._wd_dir.get(wd, reldir) == reldir:
            self._wd_dir.pop(wd, None)
            if rm_watch:
                with contextlib.suppress(OSError):  # already gone with its directory
                    self.inotify.rm_watch(wd)

    def _drop_trees(self, tops: list[str]) -> None:
        """Forget these directories and everything below them (moved away): one pass over
        the watched directories, as they are not kept as a tree."""
        prefixes = tuple(dir_mark(t) for t in tops)
        tops_set = set(tops)
        for reldir in [d for d in self._dir_wd if d in tops_set or d.startswith(prefixes)]:
            self._drop(reldir)
        for top in tops:
            self._forget_below(top)

    def _forget_below(self, reldir: str) -> None:
        if self.unwatched:
            prefix = dir_mark(reldir)
            self.unwatched = {d for d in self.unwatched
                              if not (d == reldir or d.startswith(prefix))}
        self.rules.forget_dir(reldir)

    def _forget_wd(self, wd: int) -> None:
        reldir = self._wd_dir.pop(wd, None)
        if reldir is not None and self._dir_wd.get(reldir) == wd:
            del self._dir_wd[reldir]
            if reldir == "":
                self.root_gone = True
