"""The watcher inside a real daemon: the watch limit, ignore-rule reloads, stopping early."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_proc import (
    RECORD,
    DaemonProc,
    devloop,
    inotify_watches,
    ran_files,
    read_runs,
    record_check,
    status_json,
    wait_for,
)
from test_results import lint_check

from devloop.core.daemon_health import check_daemon_health
from devloop.ignore import IgnoreRules
from devloop.store import Store
from devloop.watcher import CTIME_SLACK_NS, Watcher

Start = Callable[..., DaemonProc]


def config(root: Path, body: str) -> None:
    (root / "devloop.toml").write_text("heartbeat_interval = 1\n" + body)


def watch_limit(limit: int) -> list[str]:
    """A user namespace with its own, lower watch limit: the host's limit is left alone."""
    return ["unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$@"', "sh"]


def set_watch_limit(pid: int, limit: int) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-U", "sh", "-c",
                    f"echo {limit} > /proc/sys/user/max_inotify_watches"], check=True)


def edit_and_wait(root: Path, log: Path, rels: list[str], text: str) -> None:
    for rel in rels:
        (root / rel).write_text(text)
    wait_for(lambda: set(rels) <= ran_files(log), what=f"runs of {rels}")


def test_rescan_at_the_watch_limit_keeps_the_watches_it_has(project: Path, tmp_path: Path,
                                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    watched = [f"w{i}" for i in range(10)]
    for name in watched:
        (project / name).mkdir()
        (project / name / "a.txt").write_text("0")
    limit = 1 + len(watched) + 2  # the root, w0..w9, and two of the ten new directories
    d = start_daemon(project, prefix=watch_limit(limit))
    new = [f"n{i}" for i in range(10)]
    for name in new:
        (project / name).mkdir()
    wait_for(lambda: "watch limit" in check_daemon_health(project)["message"],
             what="watch limit reported")
    # a .gitignore change reloads the rules: a rescan of the whole tree, at the limit
    (project / ".gitignore").write_text("*.log\n")
    wait_for(lambda: "configuration reloaded" in d.log, what="reload")
    edit_and_wait(project, log, ["sync.txt"], "x")  # everything the rescan found has run
    assert not {f"{w}/a.txt" for w in watched} & ran_files(log)  # nothing there changed
    assert inotify_watches(d.pid) == limit
    edit_and_wait(project, log, [f"{w}/a.txt" for w in watched], "edited")
    assert check_daemon_health(project)["status"] == "UNHEALTHY"
    # watches to spare: the retry watches the rest, and only then is it healthy
    set_watch_limit(d.pid, 100)
    wait_for(lambda: check_daemon_health(project)["status"] == "HEALTHY", what="healthy")
    assert inotify_watches(d.pid) == 1 + len(watched) + len(new)
    log.unlink()
    edit_and_wait(project, log, [f"{n}/b.txt" for n in new] + [f"{w}/a.txt" for w in watched],
                  "again")
    assert d.proc.poll() is None


def make_tree(root: Path, dirs: int, files_per_dir: int) -> Path:
    """A big project: `dirs` directories (in groups of 1,000) of empty files."""
    for i in range(dirs):
        d = root / f"g{i // 1000}" / f"d{i}"
        os.makedirs(d)
        for j in range(files_per_dir):
            os.close(os.open(d / f"f{j}.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    (root / "devloop.toml").write_text(
        '[checks.all]\ncommand = ["true"]\npatterns = ["*.txt"]\nrun_on_start = false\n')
    return root


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """In memory (tmpfs) where there is one: 100,000 files on a busy disk take a minute."""
    if os.access("/dev/shm", os.W_OK):
        with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="devloop-test-") as d:
            yield Path(d)
    else:
        yield tmp_path_factory.mktemp("big")


@pytest.fixture(scope="module")
def many_dirs(big_dir: Path) -> Path:
    """Long to walk: 40,000 directories."""
    return make_tree(big_dir / "many_dirs", 40_000, 0)


def test_sigterm_during_the_initial_walk_does_not_wait_for_it(many_dirs: Path,
                                                              start_daemon: Start) -> None:
    d = start_daemon(many_dirs, ready=False)
    wait_for(lambda: (d.drain(0.05), any("STATUS=walking the project" in m
                                         for m in d.messages))[1], timeout=120,
             what="the walk under way")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(120) == 0  # the timeout only keeps a hang from blocking the suite
    d.drain()
    assert not d.sent("READY=1")
    assert "stopped during the initial walk, after" in d.log
    assert "watching" not in d.log  # the walk's end was never reached


def test_a_change_to_git_info_exclude_reloads_the_rules(project: Path, tmp_path: Path,
                                                         start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "skip").mkdir()
    d = start_daemon(project)
    edit_and_wait(project, log, ["skip/a.txt", "b.txt"], "x")
    watches = inotify_watches(d.pid)
    with open(project / ".git" / "info" / "exclude", "a") as f:
        f.write("skip/\nb.txt\n")
    wait_for(lambda: "configuration reloaded" in d.log, what="reload")
    assert inotify_watches(d.pid) == watches - 1  # skip/ is not watched any more
    hb = project / ".devloop" / "daemon.heartbeat"
    wait_for(lambda: json.loads(hb.read_text())["rescans"] == 1, what="the rescan counted")
    assert json.loads(hb.read_text())["overflows"] == 0  # not an overflow's
    log.unlink()
    for rel in ("skip/a.txt", "b.txt"):
        (project / rel).write_text("y")
    edit_and_wait(project, log, ["c.txt"], "x")  # events come in order: the others came first
    assert ran_files(log) == {"c.txt"}


def syntax_check_config(root: Path) -> None:
    config(root, "[checks.syntax]\n"
           f'command = ["{sys.executable}", "-m", "devloop.pysyntax", "{{files}}"]\n'
           'patterns = ["*.py"]\ndebounce_ms = 0\nrun_on_start = false\n')


def findings_of(root: Path) -> set[str]:
    return {f["file"] for s in status_json(root) for f in s["findings"]}


def test_forgetting_a_deleted_file_waits_out_a_locked_database(project: Path,
                                                               start_daemon: Start) -> None:
    syntax_check_config(project)
    d = start_daemon(project)
    (project / "bad.py").write_text("def f(:\n")
    wait_for(lambda: findings_of(project) == {"bad.py"}, what="a finding")
    conn = sqlite3.connect(project / ".devloop" / "devloop.db", isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        (project / "bad.py").unlink()
        wait_for(lambda: "database is locked" in d.log, what="lock noticed")
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    wait_for(lambda: not findings_of(project), what="the finding forgotten after the lock")
    assert d.proc.poll() is None


def test_forget_files_is_one_transaction(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.forget_files([f"f{i}.py" for i in range(50)])
    store.close()
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT"]


def test_the_walk_reports_the_files_changed_since_it_began(tmp_path: Path) -> None:
    """By ctime, which a write sets and no program can set back: not an old mtime."""
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "old.txt").write_text("old")
    (tmp_path / "d" / "e" / "old.log").write_text("ignored")
    (tmp_path / ".gitignore").write_text("*.log\n")
    time.sleep(0.2)  # file times come from a coarse clock: keep clear of its tick
    since = time.time_ns() - CTIME_SLACK_NS
    time.sleep(0.2)
    (tmp_path / "d" / "e" / "new.txt").write_text("new")
    (tmp_path / "d" / "e" / "new.log").write_text("new, but ignored")
    (tmp_path / "d" / "restored.txt").write_text("x")
    os.utime(tmp_path / "d" / "restored.txt", (0, 0))  # tar, cp -p: an mtime from the past
    found: set[str] = set()
    watcher = Watcher(tmp_path, IgnoreRules(tmp_path))
    try:
        for _ in watcher.walk_all(found, since):
            pass
        assert found == {"d/e/new.txt", "d/restored.txt"}
        assert watcher.watch_count == 3
        skipped: set[str] = set()
        for _ in Watcher(tmp_path, IgnoreRules(tmp_path)).walk_all(skipped, None):
            pass
        assert skipped == set()  # every check runs at start: nothing is stat'ed
    finally:
        watcher.close()


def test_a_directory_moved_out_takes_its_findings_and_arms_whole_project_checks(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    """No list of its files is kept: its mark does both (and a check given files is not
    run for files that are gone)."""
    whole = tmp_path / "whole.jsonl"
    (project / "devloop.toml").write_text(
        lint_check(tmp_path) + "[checks.whole]\n"
        + record_check(whole, ["*.py"], command=[sys.executable, RECORD, str(whole)]))
    (project / "pkg" / "sub").mkdir(parents=True)
    start_daemon(project)
    (project / "pkg" / "sub" / "bad.py").write_text("BAD = 1\n")
    r = devloop("status", str(project), "--wait", "--timeout", "60")
    assert r.returncode == 1 and "pkg/sub/bad.py:1:" in r.stdout
    runs = len(read_runs(whole))
    assert runs >= 1
    os.rename(project / "pkg", tmp_path / "elsewhere")
    r = devloop("status", str(project), "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout
    assert len(read_runs(whole)) == runs + 1


def test_a_rule_removed_makes_its_files_changes(project: Path, tmp_path: Path,
                                                start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    (project / "devloop.toml").write_text("[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "a").mkdir()
    (project / "a" / ".gitignore").write_text("hidden.txt\n")
    (project / "a" / "hidden.txt").write_text("x")
    (project / "a" / "seen.txt").write_text("x")
    start_daemon(project)
    (project / "a" / ".gitignore").write_text("# nothing hidden now\n")
    wait_for(lambda: "a/hidden.txt" in ran_files(log), what="the file the rule hid")
    assert "a/seen.txt" not in ran_files(log)  # visible before: not a change


def test_ignore_rules_agree_with_git_check_ignore(tmp_path: Path) -> None:
    """Nested .gitignore files, with and without `!` lines, against the real git."""
    root = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    layout = {
        ".gitignore": "*.log\nbuild/\n/top.txt\n",
        "a/.gitignore": "!keep.log\n*.tmp\n",
        "a/b/.gitignore": "*.txt\n!want.txt\n",
        "c/.gitignore": "data/\n",
    }
    for rel, text in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    files = ["x.log", "top.txt", "a/top.txt", "a/keep.log", "a/other.log", "a/x.tmp",
             "a/b/y.txt", "a/b/want.txt", "a/b/keep.log", "a/b/z.tmp", "c/data.txt",
             "c/d/e.py", "build.txt"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    git = subprocess.run(["git", "-C", str(root), "check-ignore", "--stdin"],
                         input="\n".join(files), capture_output=True, text=True)
    ignored_by_git = set(git.stdout.split())
    rules = IgnoreRules(root)
    for d in ("", "a", "a/b", "c", "c/d"):
        rules.load_dir(d, present=(root / d / ".gitignore").exists())
    assert {f for f in files if rules.is_ignored(f, False)} == ignored_by_git
