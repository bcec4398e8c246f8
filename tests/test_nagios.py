"""`devloop daemon-status --nagios`: the plugin line and exit codes, against a real daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ops_helpers import background, devloop, lock_pid, make_project, wait_for

TOML = """heartbeat_interval = 1
[checks.bad]
command = ["false"]
patterns = ["*.txt"]
"""
LINE = re.compile(r"^DEVLOOP (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+"
                  r"( \| age=\d+s;[\d.]+;[\d.]+;0 failing_checks=\d+;;;0)?$")


def nagios(project: Path, *args: str) -> tuple[int, str]:
    r = devloop("daemon-status", str(project), "--nagios", *args)
    line = r.stdout.rstrip("\n")
    assert "\n" not in line and LINE.match(line), line
    assert r.stderr == "", r.stderr
    return r.returncode, line


def heartbeat(at: Path, *, age: float = 0, pid: int | None = None, **fields: object) -> None:
    """A heartbeat in project `at`; `fields` override the record's (its "project" too)."""
    project = at
    state = project / ".devloop"
    state.mkdir(exist_ok=True)
    record = {"timestamp": (datetime.now(UTC) - timedelta(seconds=age)).isoformat(),
              "pid": pid or os.getpid(), "uptime_seconds": 5, "interval_seconds": 30,
              "project": str(project), "watches": 1, "rescans": 0, "problem": None,
              "checks": {}, **fields}
    (state / "daemon.heartbeat").write_text(json.dumps(record))


def test_ok_hung_then_killed(tmp_path: Path) -> None:
    """OK; a hung daemon (SIGSTOP) goes WARNING then CRITICAL by age; a killed one is
    CRITICAL at once and stays CRITICAL as its heartbeat ages (it used to flap to WARNING
    between the thresholds)."""
    project = make_project(tmp_path / "p", TOML)
    code, line = nagios(project)
    assert code == 2 and "not running" in line
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        hb = project / ".devloop" / "daemon.heartbeat"
        wait_for(lambda: '"failing": true' in hb.read_text(), what="the failing check")
        code, line = nagios(project, "--warning", "60", "--critical", "120")
        assert code == 0, line
        assert line.startswith("DEVLOOP OK - last heartbeat")
        assert ";60;120;0 failing_checks=1;;;0" in line and "(bad)" in line
        code, line = nagios(project)  # defaults: 2 and 4 heartbeat intervals
        assert code == 0 and "age=" in line and ";2;4;0" in line
        pid = lock_pid(project)
        assert pid
        os.kill(pid, signal.SIGSTOP)
        try:
            code, line = wait_for(lambda: (c := nagios(project, "--warning", "2",
                                                       "--critical", "30"))[0] == 1 and c,
                                  what="WARNING while hung")
            assert "last heartbeat" in line, line
            code, line = wait_for(lambda: (c := nagios(project, "--warning", "1",
                                                       "--critical", "3"))[0] == 2 and c,
                                  what="CRITICAL while hung")
            assert "last heartbeat" in line, line
        finally:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon gone")

        def aged() -> bool:  # from fresh to past --warning: CRITICAL throughout
            code, line = nagios(project, "--warning", "3", "--critical", "600")
            assert code == 2 and f"daemon PID {pid} is not running" in line, line
            m = re.search(r"age=(\d+)s", line)
            return m is not None and int(m.group(1)) > 4

        wait_for(aged, what="the killed daemon's heartbeat older than --warning")
        heartbeat(project, age=90, pid=pid)
        code, line = nagios(project, "--warning", "60", "--critical", "120")
        assert code == 2 and "not running" in line, line


def test_unreadable_and_corrupt_are_unknown(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML)
    state = project / ".devloop"
    state.mkdir()
    for content in ("{not json", "[" * 60_000, '{"pid": 1, "timestamp": NaN}'):
        (state / "daemon.heartbeat").write_text(content)
        code, line = nagios(project)
        assert code == 3 and line.startswith("DEVLOOP UNKNOWN") and "corrupt" in line, line
    heartbeat(project, watches=-5)
    code, line = nagios(project)
    assert code == 3 and "'watches'" in line, line
    for missing in (tmp_path / "no-such-project", project / "devloop.toml"):
        code, line = nagios(missing)
        assert code == 3 and "no such project directory" in line, line


@pytest.mark.parametrize("args", [
    ["--warning", "abc"], ["--warning", "-5"], ["--critical", "nan"], ["--bogus"],
    ["--warning", "120", "--critical", "60"],
])
def test_usage_errors_are_unknown(tmp_path: Path, args: list[str]) -> None:
    r = devloop("daemon-status", str(tmp_path), "--nagios", *args)
    assert r.returncode == 3, r
    assert r.stdout.startswith("DEVLOOP UNKNOWN - usage error: ") and r.stdout.count("\n") == 1
    assert r.stderr == ""


def test_usage_error_without_nagios_is_64(tmp_path: Path) -> None:
    assert devloop("daemon-status", str(tmp_path), "--bogus").returncode == 64


def test_check_names_cannot_break_the_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML)
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        pid = lock_pid(project)
        assert pid
        os.kill(pid, signal.SIGSTOP)  # it must not overwrite this record: names a project
        try:                          # may choose
            heartbeat(project, pid=pid, interval_seconds=600, checks={
                "a|b=1;2;3": {"failing": True}, "two\nlines": {"failing": True}})
            code, line = nagios(project)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert code == 0, line
        assert "failing_checks=2;;;0" in line and "a?b=1;2;3" in line and "two?lines" in line


def test_problem_reported_by_daemon_is_warning(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML)
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        (project / "devloop.toml").write_text("max_parallel = 0\n")  # the reload fails
        hb = project / ".devloop" / "daemon.heartbeat"
        wait_for(lambda: '"problem": "config reload failed' in hb.read_text(),
                 what="the problem in the heartbeat")
        code, line = nagios(project)
        assert code == 1 and "config reload failed" in line, line


def test_foreign_pid_in_fresh_heartbeat_is_critical(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML)
    heartbeat(project)
    code, line = nagios(project)  # this pytest process is no `devloop watch`
    assert code == 2 and "not the devloop daemon" in line
    # a command line that merely holds the words (like `watch -n1 devloop status`)
    words = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "devloop", "watch", str(project)])
    other = make_project(tmp_path / "other", TOML)
    try:
        heartbeat(project, pid=words.pid)
        code, line = nagios(project)
        assert code == 2 and "not the devloop daemon" in line, line
        # a real daemon, of another project (a PID reused by another devloop)
        with background(other) as r:
            assert r.returncode == 0, r.stderr
            pid = lock_pid(other)
            assert pid
            heartbeat(project, pid=pid)
            code, line = nagios(project)
            assert code == 2 and "not the devloop daemon" in line, line
            assert nagios(other)[0] == 0  # and its own project's: fine
            # a copy of the other project's heartbeat (a planted health_file): the record's
            # claim to be of `other` is no second name to accept
            heartbeat(project, pid=pid, project=str(other))
            code, line = nagios(project)
            assert code == 2 and "not the devloop daemon" in line, line
    finally:
        words.kill()
        words.wait()


@pytest.mark.parametrize(("argv", "directory"), [
    (["/opt/devloop/bin/python3", "/opt/devloop/bin/devloop", "watch", "--foreground", "/p"],
     "/p"),
    (["/opt/devloop/bin/devloop", "watch", "/p"], "/p"),
    (["python3", "-m", "devloop", "watch"], "."),
    (["/usr/bin/python3.11", "-u", "-X", "dev", "-m", "devloop", "watch", "--log-backups", "3"],
     "."),
    (["python3", "-m", "devloop", "watch", "--ready-timeout", "5", "proj"], "proj"),
    (["watch", "-n1", "devloop", "status"], None),
    (["python3", "-c", "pass", "devloop", "watch", "/p"], None),
    (["/opt/devloop/bin/devloop", "status", "/p"], None),
    (["vim", "devloop", "watch"], None),
    ([], None),
])
def test_watch_dir_reads_only_the_daemons_own_command_line(argv: list[str],
                                                          directory: str | None) -> None:
    from devloop.core.daemon_health import watch_dir

    assert watch_dir(argv) == directory


def test_daemon_started_on_a_relative_dir_is_recognised(tmp_path: Path) -> None:
    """`devloop watch --foreground .` from the project: its cwd says which project."""
    project = make_project(tmp_path / "p", TOML)
    proc = subprocess.Popen([sys.executable, "-m", "devloop", "watch", "--foreground", "."],
                            cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: nagios(project)[0] == 0, what="OK for its own project")
        other = make_project(tmp_path / "other", TOML)
        heartbeat(other, pid=proc.pid)
        code, line = nagios(other)
        assert code == 2 and "not the devloop daemon" in line, line
    finally:
        proc.terminate()
        proc.wait(30)
