"""Adversarial review of the watcher without a per-file snapshot (issue 14): real files,
real inotify, a real daemon. Each test names a way a change could be lost."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemon_proc import DaemonProc, devloop, inotify_watches, ran_files, record_check, wait_for
from test_results import lint_check

from devloop.ignore import IgnoreRules
from devloop.watcher import Watcher

Start = Callable[..., DaemonProc]


def config(root: Path, body: str) -> None:
    (root / "devloop.toml").write_text("heartbeat_interval = 1\n" + body)


@contextmanager
def overflowed(d: DaemonProc, flood_dir: Path) -> Iterator[None]:
    """The daemon stopped (SIGSTOP) and its event queue full before the body runs: every
    event of the body is lost, and the daemon learns of it by IN_Q_OVERFLOW alone."""
    assert flood_dir.is_dir()  # made before the daemon started: watched
    time.sleep(0.2)  # clear of the ctime slack: what came before is no change
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    os.kill(d.pid, signal.SIGSTOP)
    try:
        for i in range(limit // 2 + 100):  # IN_CREATE and IN_CLOSE_WRITE each
            (flood_dir / f"f{i}.dat").write_text("x")
        yield
    finally:
        os.kill(d.pid, signal.SIGCONT)
    wait_for(lambda: "inotify queue overflowed" in d.log, what="the overflow seen")


@contextmanager
def stopped_mid_walk(d: DaemonProc, far_enough: Callable[[set[int]], bool] = bool
                     ) -> Iterator[set[int]]:
    """The daemon stopped (SIGSTOP) during its initial walk, once far_enough(watched): the
    body gets the inodes of the directories it watches so far (from /proc/PID/fdinfo), the
    ones walked already. Stopped too early, it walks on a few ms at a time."""
    wait_for(lambda: (d.drain(0.01), any("STATUS=walking the project" in m
                                         for m in d.messages))[1], timeout=120,
             what="the initial walk under way")
    os.kill(d.pid, signal.SIGSTOP)
    try:
        while True:
            watched: set[int] = set()
            for fd in os.listdir(f"/proc/{d.pid}/fdinfo"):
                text = Path(f"/proc/{d.pid}/fdinfo/{fd}").read_text()
                watched |= {int(ino, 16) for ino in re.findall(
                    r"^inotify wd:\S+ ino:([0-9a-f]+)", text, re.MULTILINE)}
            if far_enough(watched):
                break
            os.kill(d.pid, signal.SIGCONT)
            time.sleep(0.003)
            os.kill(d.pid, signal.SIGSTOP)
        assert not d.sent("READY=1")
        yield watched
    finally:
        os.kill(d.pid, signal.SIGCONT)
    d.wait_ready(120)


def many_dirs(root: Path, n: int = 10_000) -> list[Path]:
    """Enough directories that the initial walk takes a while (a few 100 ms)."""
    dirs = [root / f"g{i // 500}" / f"d{i}" for i in range(n)]
    for d in dirs:
        os.makedirs(d)
    return dirs


def run_a_later_edit(project: Path, log: Path) -> None:
    """Edit sync.txt and wait for its run: the events before it have been read."""
    (project / "sync.txt").write_text("x")
    wait_for(lambda: "sync.txt" in ran_files(log), what="a later edit run")


def settled(root: Path) -> str:
    """`status --wait`: every change seen has been run; its output."""
    r = devloop("status", str(root), "--wait", "--timeout", "60")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.stdout


def test_a_gitignore_edit_lost_in_an_overflow_still_runs_the_files_it_unhides(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """The rescan reads a/.gitignore anew into the rules in force, so the reload it
    causes sees no difference between old and new rules for a/."""
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "a").mkdir()
    (project / "a" / ".gitignore").write_text("hidden.txt\n")
    (project / "a" / "hidden.txt").write_text("x")
    (project / "flood").mkdir()
    d = start_daemon(project)
    with overflowed(d, project / "flood"):
        (project / "a" / ".gitignore").write_text("# nothing hidden now\n")
    wait_for(lambda: "configuration reloaded" in d.log, what="the reload")
    settled(project)
    run_a_later_edit(project, log)
    assert "a/hidden.txt" in ran_files(log)


def test_a_directory_swapped_for_one_moved_in_during_an_overflow_runs_its_files(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """Moved in, its files keep their old ctime: the rescan must see that the directory
    under the known name is another one (the watch descriptor tells), not a known one."""
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "d").mkdir()
    (project / "d" / "old.txt").write_text("x")
    (tmp_path / "newd" / "sub").mkdir(parents=True)
    (tmp_path / "newd" / "y.txt").write_text("y")
    (tmp_path / "newd" / "sub" / "z.txt").write_text("z")
    (project / "flood").mkdir()
    d = start_daemon(project)
    with overflowed(d, project / "flood"):
        os.rename(project / "d", tmp_path / "oldd")
        os.rename(tmp_path / "newd", project / "d")
    settled(project)
    run_a_later_edit(project, log)
    assert {"d/y.txt", "d/sub/z.txt"} <= ran_files(log)
    assert inotify_watches(d.pid) == 4  # ., flood, d, d/sub: none left on the one moved out


def test_a_failure_without_findings_goes_with_its_directory_moved_out(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """As with a deletion (test_deleted_file_takes_its_failure_along): the failing run
    checked only files that are gone, so its failure is gone too."""
    config(project, "[checks.fails]\n"
           'command = ["sh", "-c", "exit 1", "sh", "{files}"]\n'
           'patterns = ["*.txt"]\ndebounce_ms = 0\nrun_on_start = false\n')
    (project / "pkg").mkdir()
    start_daemon(project)
    (project / "pkg" / "a.txt").write_text("x")
    r = devloop("status", str(project), "--wait", "--timeout", "60")
    assert r.returncode == 1, r.stdout
    os.rename(project / "pkg", tmp_path / "elsewhere")
    r = devloop("status", str(project), "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout


def test_a_directory_renamed_during_an_overflow_stays_watched(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """The rescan finds the old watches under the new names (the kernel keeps a watch
    with its inode); dropping the old names must not take those watches along."""
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "d" / "sub").mkdir(parents=True)
    (project / "flood").mkdir()
    d = start_daemon(project)
    with overflowed(d, project / "flood"):
        os.rename(project / "d", project / "e")
    settled(project)
    edits = ["e/x.txt", "e/sub/y.txt"]
    for rel in edits:
        (project / rel).write_text("edited")
    run_a_later_edit(project, log)
    time.sleep(0.5)  # events come in order, yet each directory is read on its own
    assert set(edits) <= ran_files(log)


def test_a_file_named_in_bytes_that_are_not_utf8_is_checked_and_recorded(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    start_daemon(project)
    with open(os.fsencode(project) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"x")
    wait_for(lambda: os.fsdecode(b"caf\xe9.txt") in ran_files(log), what="its run")
    r = devloop("status", str(project), "--wait", "--timeout", "10")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_directory_moved_within_the_tree_during_the_initial_walk_stays_watched(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """From a directory walked already to one not yet walked: the walk finds its watch
    under the new name, and the event of the move (read after READY) must not drop it."""
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    dirs = many_dirs(project)
    for d in dirs[::10]:
        (d / "moving" / "sub").mkdir(parents=True)
    d = start_daemon(project, ready=False)
    sources = [(x / "moving" / "sub").stat().st_ino for x in dirs[::10]]
    with stopped_mid_walk(d, lambda w: any(i in w for i in sources)) as walked:
        source = next(x for x in dirs[::10] if (x / "moving" / "sub").stat().st_ino in walked)
        target = next(x for x in reversed(dirs) if x.stat().st_ino not in walked)
        os.rename(source / "moving", target / "moved")
    settled(project)
    rel = target.relative_to(project)
    edits = [f"{rel}/moved/x.txt", f"{rel}/moved/sub/y.txt"]
    for e in edits:
        (project / e).write_text("edited")
    run_a_later_edit(project, log)
    time.sleep(0.5)  # events come in order, yet each directory is read on its own
    assert set(edits) <= ran_files(log)


@pytest.mark.xfail(strict=True, reason=(
    "moved in (or within) where the walk has not been yet, the tree's files keep their old "
    "ctime and no event names them: the walk lists them as old. Fix (not small: the walk's "
    "hot loop): with since_ns, a subdirectory whose own ctime is recent (a move sets it) "
    "is walked as new, its subtree too, at the cost of reporting the files of a directory "
    "whose entries changed during the walk"))
def test_a_directory_moved_in_during_the_initial_walk_has_its_files_checked(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    dirs = many_dirs(project)
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("a")
    (tmp_path / "tree" / "sub" / "b.txt").write_text("b")
    d = start_daemon(project, ready=False)
    with stopped_mid_walk(d) as walked:
        target = next(x for x in reversed(dirs) if x.stat().st_ino not in walked)
        os.rename(tmp_path / "tree", target / "tree")
    settled(project)
    run_a_later_edit(project, log)
    rel = target.relative_to(project)
    assert {f"{rel}/tree/a.txt", f"{rel}/tree/sub/b.txt"} <= ran_files(log)


def test_an_exclude_edit_lost_in_an_overflow_reloads_the_rules(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """.git/info/exclude has a watch of its own, outside the walk: the rescan must look
    at it too (a .gitignore or devloop.toml edit is found by its ctime)."""
    log = tmp_path / "runs.jsonl"
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    exclude = project / ".git" / "info" / "exclude"
    exclude.write_text("hidden.txt\n")
    (project / "hidden.txt").write_text("x")
    (project / "flood").mkdir()
    d = start_daemon(project)
    with overflowed(d, project / "flood"):
        exclude.write_text("# nothing hidden now\n")
    settled(project)
    run_a_later_edit(project, log)
    wait_for(lambda: "hidden.txt" in ran_files(log), timeout=10, what="the file it unhid")


def test_a_gitignore_edit_during_a_whole_project_run_still_runs_the_files_it_unhides(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"])
           + '[checks.whole]\ncommand = ["true", "{files}"]\npatterns = ["*.dat"]\n'
           "run_on_start = true\n")  # lists the whole tree from READY on
    many_dirs(project / "big")
    # a directory the listings (and the reload's rescan) reach after big/ (a walk takes
    # the entries last listed first): the whole run's listing reaches it first
    a = None
    for name in "abcdefghijklmnop":
        (project / name).mkdir()
        if os.listdir(project).index(name) < os.listdir(project).index("big"):
            a = project / name
            break
        (project / name).rmdir()
    assert a is not None
    (a / ".gitignore").write_text("hidden.txt\n")
    (a / "hidden.txt").write_text("x")
    start_daemon(project)
    (a / ".gitignore").write_text("# nothing hidden now\n")
    settled(project)
    run_a_later_edit(project, log)
    assert f"{a.name}/hidden.txt" in ran_files(log)


@pytest.mark.xfail(strict=True, reason=(
    "a close has no time stamp: written before the queue was last seen empty and closed "
    "while the events were lost, the file's ctime is too old for the overflow's rescan "
    "(before issue 14 too: the snapshot stamped it at its IN_CREATE). A limit of the "
    "design, said in README's Watching (IN_Q_OVERFLOW)"))
def test_a_file_written_earlier_and_closed_during_an_overflow_is_checked(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "flood").mkdir()
    d = start_daemon(project)
    with open(project / "slow.txt", "w") as slow:
        slow.write("written now, closed later")
        slow.flush()
        time.sleep(0.2)  # past the ctime slack
        (project / "tick.txt").write_text("x")  # the daemon reads the queue empty after it
        wait_for(lambda: "tick.txt" in ran_files(log), what="the tick's run")
        with overflowed(d, project / "flood"):
            slow.close()
    settled(project)
    run_a_later_edit(project, log)
    assert "slow.txt" in ran_files(log)


def test_events_lost_to_an_error_while_reading_them_are_found_by_the_rescan(
        tmp_path: Path) -> None:
    """The daemon answers an exception in read_events with a rescan ("a bug must not cost
    a change"): without a snapshot, that rescan must look for them by ctime, as after an
    overflow. The bug is played by the rules raising once."""
    (tmp_path / "d").mkdir()
    watcher = Watcher(tmp_path, IgnoreRules(tmp_path))
    try:
        for _ in watcher.walk_all(set(), None):
            pass
        time.sleep(0.2)  # clear of the ctime slack: what came before is no change
        (tmp_path / "d" / "a.txt").write_text("x")

        def bug(relpath: str, is_dir: bool) -> bool:
            raise RuntimeError("a bug")

        watcher.rules.is_ignored = bug  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            watcher.read_events()
        del watcher.rules.is_ignored
        changes: set[str] = set()
        for _ in watcher.rescan(changes):
            pass
        assert "d/a.txt" in changes
    finally:
        watcher.close()


def link_tmpfile(directory: Path, name: str, data: bytes) -> None:
    """Write a file the way some tools save: an unnamed O_TMPFILE, written, then given its
    name with linkat (AT_EMPTY_PATH: needs CAP_DAC_READ_SEARCH, so root), then closed."""
    fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, at_empty_path = -100, 0x1000
        if libc.linkat(fd, b"", at_fdcwd, os.fsencode(directory / name), at_empty_path):
            raise OSError(ctypes.get_errno(), "linkat")
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="linkat(AT_EMPTY_PATH) needs root")
@pytest.mark.xfail(strict=True, reason=(
    "its IN_CREATE (nlink 1, a regular file) is taken for a new file being written and "
    "skipped, waiting for an IN_CLOSE_WRITE that never names it: the close is of the "
    "unnamed file ('#<inode>', which IN_EXCL_UNLINK even suppresses). Older than issue 14 "
    "(read_events); a fix needs the CREATE counted by another sign, or no EXCL_UNLINK and "
    "the '#<inode>' close mapped to the names of that inode"))
def test_a_file_saved_through_o_tmpfile_and_linkat_is_checked(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    start_daemon(project)
    link_tmpfile(project, "new.txt", b"saved\n")
    run_a_later_edit(project, log)
    assert "new.txt" in ran_files(log)


def test_two_directories_swapped_during_an_overflow_are_both_new_and_stay_watched(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """Each known name now holds the other's inode: the rescan finds each watch under
    the other name, and must neither keep the files as known nor drop those watches."""
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    for name in ("a", "b"):
        (project / name / "sub" / name).mkdir(parents=True)
        (project / name / "f.txt").write_text(name)
    (project / "flood").mkdir()
    d = start_daemon(project)
    watches = inotify_watches(d.pid)
    with overflowed(d, project / "flood"):
        os.rename(project / "a", project / "t")
        os.rename(project / "b", project / "a")
        os.rename(project / "t", project / "b")
    settled(project)
    assert {"a/f.txt", "b/f.txt"} <= ran_files(log)
    edits = ["a/sub/b/x.txt", "b/sub/a/y.txt", "a/z.txt", "b/w.txt"]
    for rel in edits:
        (project / rel).write_text("edited")
    run_a_later_edit(project, log)
    time.sleep(0.5)  # events come in order, yet each directory is read on its own
    assert set(edits) <= ran_files(log)
    assert inotify_watches(d.pid) == watches


def test_a_file_deleted_while_no_daemon_ran_takes_its_failure_along(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(lint_check(tmp_path))
    d = start_daemon(project)
    (project / "bad.py").write_text("BAD = 1\n")
    assert devloop("status", str(project), "--wait", "--timeout", "60").returncode == 1
    assert d.stop() == 0
    (project / "bad.py").unlink()
    start_daemon(project)
    r = devloop("status", str(project), "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout
