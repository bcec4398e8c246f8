"""Faults, misbehaving checks, hostile state: the daemon survives and loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_proc import (
    DaemonProc,
    alive,
    devloop,
    ran_files,
    read_runs,
    record_check,
    status_json,
    wait_for,
)

from devloop.core.daemon_health import check_daemon_health

Start = Callable[..., DaemonProc]
ROOT = os.geteuid() == 0


def config(root: Path, body: str, heartbeat: float = 1) -> None:
    (root / "devloop.toml").write_text(f"heartbeat_interval = {heartbeat}\n" + body)


# -- misbehaving checks -----------------------------------------------------------------

def test_double_forked_escapee_is_killed(project: Path, tmp_path: Path,
                                         start_daemon: Start) -> None:
    pids = tmp_path / "pids"
    config(project, "[checks.escape]\n"
           f'command = ["(setsid sleep 1000 & echo $! > {pids}); exit 0"]\n'
           'shell = true\npatterns = ["*.txt"]\ndebounce_ms = 0\nrun_on_start = false\n')
    start_daemon(project)
    (project / "a.txt").write_text("x")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), what="escapee started")
    pid = pids.read_text().strip()
    # it left its session and process group, and its parent is gone: only the
    # daemon (a child subreaper) can still find it
    wait_for(lambda: not alive(pid), timeout=30, what="escapee killed")


def test_kill9_mid_run_leaves_no_orphan_after_restart(project: Path, tmp_path: Path,
                                                      start_daemon: Start) -> None:
    pids = tmp_path / "pids"
    config(project, "[checks.long]\n"
           f'command = ["sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait"]\n'
           'shell = true\npatterns = ["*.txt"]\ndebounce_ms = 0\nrun_on_start = false\n')
    d = start_daemon(project)
    (project / "a.txt").write_text("x")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="check running")
    sleeper, leader = pids.read_text().split()
    d.stop(signal.SIGKILL)
    start_daemon(project)
    for pid in (leader, sleeper):
        wait_for(lambda pid=pid: not alive(pid), what="leftover group killed by the new daemon")
    assert check_daemon_health(project)["status"] == "HEALTHY"


def test_garbage_in_findings_format(project: Path) -> None:
    garbage = "printf 'a.py:notanumber: x\\n:1: y\\n\\377\\376 a.py:1:1:\\n[{\"filename\": 1}]\\n'"
    (project / "a.py").write_text("")
    config(project, f"[checks.garbage]\ncommand = [{json.dumps(garbage)}]\nshell = true\n"
                    'patterns = ["*"]\n')
    r = devloop("run", str(project))
    assert r.returncode == 0, r.stdout + r.stderr
    st = status_json(project)
    assert st[0]["outcome"] == "pass"


def test_self_triggering_check_is_stopped(project: Path, tmp_path: Path,
                                          start_daemon: Start) -> None:
    runs = tmp_path / "runs"
    config(project, "[checks.loop]\n"
           f'command = ["echo run >> {runs}; echo x >> gen.txt"]\n'
           'shell = true\npatterns = ["gen.txt"]\ndebounce_ms = 0\nrun_on_start = false\n')
    d = start_daemon(project)
    (project / "gen.txt").write_text("start\n")
    wait_for(lambda: "keeps changing the files it checks" in d.log, what="loop detected")
    time.sleep(2)
    count = len(runs.read_text().splitlines())
    time.sleep(2)
    assert len(runs.read_text().splitlines()) == count  # it stopped
    assert count <= 15
    with (project / "gen.txt").open("a") as f:  # an edit while it is idle runs it again
        f.write("by hand\n")
    wait_for(lambda: len(runs.read_text().splitlines()) > count, what="runs again")


# -- hostile state, bad input -----------------------------------------------------------

def test_state_is_private_and_planted_symlinks_are_not_followed(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    state = project / ".devloop"
    state.mkdir(mode=0o755)
    for name in ("daemon.heartbeat", "devloop.db-wal", "devloop.db-shm", ".checks.pids.tmp"):
        (state / name).symlink_to(victim)
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    start_daemon(project)
    (project / "a.txt").write_text("x")
    wait_for(lambda: status_json(project), what="a stored run")
    assert victim.read_text() == "precious"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for entry in state.iterdir():
        if entry.is_symlink():
            continue  # the planted ones, moved aside
        mode = 0o700 if entry.is_dir() else 0o600  # the tool cache is a directory
        assert stat.S_IMODE(entry.lstat().st_mode) == mode, entry
    assert not (state / "daemon.heartbeat").is_symlink()


def test_heartbeat_symlink_is_not_followed_by_the_health_check(tmp_path: Path) -> None:
    state = tmp_path / ".devloop"
    state.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"pid": os.getpid(), "timestamp": "2026-01-01T00:00:00+00:00",
                                  "uptime_seconds": 1}))
    (state / "daemon.heartbeat").symlink_to(secret)
    h = check_daemon_health(tmp_path)
    assert h["status"] == "ERROR" and "symlink" in h["message"]


@pytest.mark.parametrize(("content", "status_", "words"), [
    (b"", "ERROR", "not valid JSON"),
    (b'{"pid": 1, "timest', "ERROR", "not valid JSON"),
    (b"[1, 2]", "ERROR", "JSON object"),
    (b'{"pid": "1", "timestamp": "2026-01-01T00:00:00+00:00", "uptime_seconds": 1}', "ERROR",
     "'pid'"),
    (b'{"pid": 1, "timestamp": "yesterday", "uptime_seconds": 1}', "ERROR", "ISO 8601"),
    (b'{"pid": 1, "timestamp": "2026-01-01T00:00:00", "uptime_seconds": 1}', "ERROR",
     "UTC offset"),
    (b'{"pid": 1, "timestamp": "2999-01-01T00:00:00+00:00", "uptime_seconds": 1}',
     "UNHEALTHY", "future"),
    (b'{"pid": 1, "timestamp": "2020-01-01T00:00:00+00:00", "uptime_seconds": 1}',
     "UNHEALTHY", "not the devloop daemon"),  # PID 1 is init: foreign, whatever the age
    (b"\xff\xfe\x00", "ERROR", "not valid JSON"),
    (b"[" * 60_000, "ERROR", "not valid JSON"),  # RecursionError inside json.loads
    (b'{"pid": 1, "timestamp": "0001-01-01T00:00:00+14:00", "uptime_seconds": 1}', "ERROR",
     "out of range"),
    (b'{"pid": 1, "timestamp": "2026-01-01T00:00:00+00:00", "uptime_seconds": NaN}', "ERROR",
     "not valid JSON"),
    (b'{"pid": 1, "timestamp": "2026-01-01T00:00:00+00:00", "uptime_seconds": 1, '
     b'"rescans": -5}', "ERROR", "'rescans' is not a count"),
    (b'{"pid": 1, "timestamp": "2026-01-01T00:00:00+00:00", "uptime_seconds": 1, '
     b'"checks": {"c": {"last_duration_seconds": 1e400}}}', "ERROR", "is not a number"),
    (b" " * 100_000, "ERROR", "too large"),
])
def test_fuzzed_heartbeat_files(tmp_path: Path, content: bytes, status_: str,
                                words: str) -> None:
    state = tmp_path / ".devloop"
    state.mkdir()
    (state / "daemon.heartbeat").write_bytes(content)
    h = check_daemon_health(tmp_path)
    assert (h["status"], h["healthy"]) == (status_, False)
    assert words in h["message"]


def test_heartbeat_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / ".devloop").mkdir()
    os.mkfifo(tmp_path / ".devloop" / "daemon.heartbeat")
    assert check_daemon_health(tmp_path)["status"] == "ERROR"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_random_heartbeats_never_raise(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    state = tmp_path / ".devloop"
    state.mkdir()
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                     max_size=3),
        max_leaves=8,
    )
    doc = st.fixed_dictionaries({}, optional={
        "pid": values, "timestamp": values | st.datetimes().map(lambda d: d.isoformat()),
        "uptime_seconds": values, "interval_seconds": values, "problem": values})

    @settings(max_examples=400, deadline=None)
    @given(data=doc | values, raw=st.binary(max_size=64))
    def check(data: object, raw: bytes) -> None:
        for content in (json.dumps(data).encode(), raw):
            (state / "daemon.heartbeat").write_bytes(content)
            h = check_daemon_health(tmp_path)
            assert h["status"] in ("ERROR", "UNHEALTHY") or (
                h["status"] == "HEALTHY" and h["pid"] == os.getpid())
            assert isinstance(h["message"], str)

    check()


def test_no_torn_heartbeat_reads_while_writing(tmp_path: Path) -> None:
    state = tmp_path / ".devloop"
    state.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", f"""
import itertools, os
from pathlib import Path
from devloop.core.daemon_health import heartbeat_record, write_heartbeat
for i in itertools.count():
    write_heartbeat(Path({str(state)!r}), heartbeat_record(
        pid=os.getpid(), uptime_seconds=i, interval_seconds=30, project="p" * (i % 3000),
        watches=i, rescans=0, problem=None, checks={{}}))
"""])
    try:
        wait_for(lambda: (state / "daemon.heartbeat").exists(), what="first heartbeat")
        errors = 0
        for _ in range(100_000):
            if check_daemon_health(tmp_path)["status"] == "ERROR":
                errors += 1
        assert errors == 0
    finally:
        writer.kill()
        writer.wait()


def test_two_daemons_started_at_once_exactly_one_runs(project: Path, tmp_path: Path) -> None:
    config(project, "[checks.all]\n" + record_check(tmp_path / "l", ["*.txt"]))
    procs = [DaemonProc(project) for _ in range(2)]
    try:
        loser = wait_for(lambda: [p for p in procs if p.proc.poll() is not None], what="one exit")
        assert len(loser) == 1 and loser[0].proc.returncode == 75
        winner = next(p for p in procs if p is not loser[0])
        winner.wait_ready()
        assert f"PID {winner.pid}" in loser[0].log
    finally:
        for p in procs:
            p.close()


def test_corrupted_database_is_moved_aside(project: Path, tmp_path: Path,
                                           start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    state = project / ".devloop"
    state.mkdir()
    (state / "devloop.db").write_bytes(b"this is not a database" * 200)
    d = start_daemon(project)
    assert "moved aside" in d.log
    assert any(p.name.startswith("devloop.db.corrupt-") for p in state.iterdir())
    (project / "a.txt").write_text("x")
    wait_for(lambda: status_json(project), what="results in a fresh database")


def test_database_locked_by_another_writer_loses_nothing(project: Path, tmp_path: Path,
                                                         start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    d = start_daemon(project)
    conn = sqlite3.connect(project / ".devloop" / "devloop.db", isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(3):
            (project / f"f{i}.txt").write_text("x")
            wait_for(lambda i=i: any(f"f{i}.txt" in r["files"] for r in read_runs(log)),
                     what="check ran")
        wait_for(lambda: "database is locked" in d.log, what="lock noticed")
        # still watching and running checks while the database is locked
        assert d.proc.poll() is None
    finally:
        conn.execute("ROLLBACK")
        conn.close()

    def stored() -> set[str]:
        r = devloop("status", str(project), "--json")
        if not r.stdout.strip():
            return set()
        files = set()
        db = sqlite3.connect(f"file:{project}/.devloop/devloop.db?mode=ro", uri=True)
        for (f,) in db.execute("SELECT files FROM runs"):
            files.update(json.loads(f))
        db.close()
        return files

    wait_for(lambda: stored() >= {"f0.txt", "f1.txt", "f2.txt"}, what="runs saved after")


# -- disk and permission faults (need root: mounts) ------------------------------------

@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    path.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    filler = path / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs: needs root")
def test_disk_full_keeps_watching_and_says_why(project: Path, tmp_path: Path,
                                               start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    with tiny_tmpfs(project / ".devloop", "1m"):
        # the checks' tool caches (bytecode of every module they import) would share the
        # tiny .devloop/ with the database: they go elsewhere, as under the unit
        d = start_daemon(project, env={"CACHE_DIRECTORY": str(tmp_path / "cache")})
        (project / "before.txt").write_text("x")
        wait_for(lambda: status_json(project), what="a stored run")
        filler = fill(project / ".devloop")
        for i in range(3):
            (project / f"full{i}.txt").write_text("x")
        wait_for(lambda: {f"full{i}.txt" for i in range(3)} <= ran_files(log),
                 what="checks still run")
        h = wait_for(lambda: (lambda h: h if "full" in h["message"] else None)(
            check_daemon_health(project)), what="health names the problem")
        assert h["status"] == "UNHEALTHY"
        assert d.log.count("cannot write results") == 1  # once, not once per event
        filler.unlink()
        wait_for(lambda: check_daemon_health(project)["status"] == "HEALTHY", what="recovery")
        db = sqlite3.connect(f"file:{project}/.devloop/devloop.db?mode=ro", uri=True)
        saved = {f for (fs,) in db.execute("SELECT files FROM runs") for f in json.loads(fs)}
        db.close()
        assert {"full0.txt", "full1.txt", "full2.txt"} <= saved  # nothing lost
        assert d.stop() == 0


@pytest.mark.skipif(not ROOT, reason="bind-mounts: needs root")
def test_state_dir_read_only_keeps_watching(project: Path, tmp_path: Path,
                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    d = start_daemon(project)
    state = project / ".devloop"
    # a read-only view over .devloop/: nothing new can be created in it from now on
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        for i in range(3):
            (project / f"ro{i}.txt").write_text("x")
        wait_for(lambda: {f"ro{i}.txt" for i in range(3)} <= ran_files(log),
                 what="checks still run")
        h = wait_for(lambda: (lambda h: h if not h["healthy"] else None)(
            check_daemon_health(project)), timeout=30, what="unhealthy")
        assert "cannot write .devloop/" in h["message"]
        assert d.log.count("cannot write the heartbeat") == 1  # once, not once a second
    finally:
        subprocess.run(["umount", str(state)], check=True)
    wait_for(lambda: check_daemon_health(project)["healthy"], what="recovery")
    assert "heartbeat written again" in d.log
    assert d.proc.poll() is None


def test_watch_limit_while_running_recovers(project: Path, tmp_path: Path,
                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    (project / "keep").mkdir()
    prefix = ["unshare", "--user", "--map-root-user", "sh", "-c",
              'echo 6 > /proc/sys/user/max_inotify_watches && exec "$@"', "sh"]
    d = start_daemon(project, prefix=prefix)
    for i in range(8):
        (project / f"d{i}").mkdir()
    h = wait_for(lambda: (lambda h: h if "watch limit" in h["message"] else None)(
        check_daemon_health(project)), what="watch limit reported")
    assert h["status"] == "UNHEALTHY"
    assert d.proc.poll() is None
    (project / "keep" / "a.txt").write_text("x")  # still watching what it has
    wait_for(lambda: any("keep/a.txt" in r["files"] for r in read_runs(log)), what="run")
    for i in range(8):
        os.rmdir(project / f"d{i}")
    (project / "late").mkdir()
    (project / "late" / "b.txt").write_text("x")
    wait_for(lambda: check_daemon_health(project)["status"] == "HEALTHY", what="recovered")
    wait_for(lambda: any("late/b.txt" in r["files"] for r in read_runs(log)), what="late file")
