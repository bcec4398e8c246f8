"""Results a developer can trust (issue 11): state, stale, `status --wait`, reasons,
restarts, deleted files, readable output. Real daemons, real checks, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import DaemonProc, devloop, status_json, wait_for

from devloop import results
from devloop.core import daemon_health
from devloop.store import CheckState, Run, Store

Start = Callable[..., DaemonProc]

LINT = """\
import sys
bad = 0
for name in sys.argv[1:]:
    with open(name) as f:
        for i, line in enumerate(f, 1):
            if "BA" "D" in line:  # this script may lie in the project it checks
                print(f"{name}:{i}: error: {line.strip()}")
                bad += 1
sys.exit(1 if bad else 0)
"""


def read_heartbeat(project: Path) -> dict[str, Any] | None:
    """The heartbeat as a monitor reads it; None while there is none (or half of one)."""
    try:
        raw = daemon_health.heartbeat_path(project).read_bytes()
    except FileNotFoundError:
        return None
    return daemon_health.parse(raw)[0]


def check(name: str, **body: Any) -> str:
    return f"[checks.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())


def lint_check(tmp_path: Path, **extra: Any) -> str:
    script = tmp_path / "lint.py"
    script.write_text(LINT)
    return check("lint", command=[sys.executable, str(script), "{files}"], patterns=["*.py"],
                 **{"debounce_ms": 0, "run_on_start": False, **extra})


def gate_check(gate: Path) -> str:
    """A check that runs until `gate` exists: "running" for as long as the test wants."""
    return check("gate", command=[f"while [ ! -e '{gate}' ]; do sleep 0.02; done"],
                 shell=True, patterns=["*.py"], debounce_ms=0, run_on_start=False)


def text(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return devloop("status", str(project), *args)


def test_state_running_stale_and_wait(project: Path, tmp_path: Path, start_daemon: Start
                                      ) -> None:
    gate = tmp_path / "gate"
    (project / "devloop.toml").write_text(gate_check(gate))
    start_daemon(project)
    (project / "a.py").write_text("x = 1\n")
    wait_for(lambda: [e for e in results.snapshot(project)["checks"]
                      if e["state"] == "running"], what="running")
    out = text(project).stdout
    assert "⟳ gate: running" in out and "last result: none yet" in out
    r = text(project, "--wait", "--timeout", "0.5")
    assert r.returncode == 75 and "timed out" in r.stderr
    gate.touch()
    r = text(project, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "1 check, 0 failing"
    gate.unlink()
    (project / "a.py").write_text("x = 2\n")
    wait_for(lambda: [e for e in status_json(project) if e["state"] == "running"],
             what="running again")
    [entry] = status_json(project)
    assert entry["outcome"] == "pass" and entry["stale"] is True
    assert "last result: pass" in text(project).stdout and ", stale" in text(project).stdout
    gate.touch()
    r = text(project, "--wait", "--timeout", "60", "--json")
    [entry] = json.loads(r.stdout)
    assert (r.returncode, entry["state"], entry["stale"]) == (0, "idle", False)


def test_wait_sees_a_save_the_daemon_has_not_read_yet(project: Path, tmp_path: Path,
                                                      start_daemon: Start) -> None:
    """The save is made while the daemon is stopped (SIGSTOP): published, all is idle and
    passing; only the sync through `.devloop/sync` makes the waiter wait for it."""
    (project / "devloop.toml").write_text(lint_check(tmp_path, debounce_ms=300))
    (project / "good.py").write_text("x = 1\n")
    d = start_daemon(project)
    assert devloop("run", str(project)).returncode == 0
    os_kill = os.kill
    os_kill(d.pid, signal.SIGSTOP)
    try:
        (project / "bad.py").write_text("BAD = 1\n")
        waiter = subprocess.Popen([sys.executable, "-m", "devloop", "status", str(project),
                                   "--wait", "--timeout", "120"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)  # let it read the (old) state; not an assertion on time
        assert waiter.poll() is None, waiter.communicate()
    finally:
        os_kill(d.pid, signal.SIGCONT)
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 1, out + err + d.log
    assert "bad.py:1: error: BAD = 1" in out


def test_no_daemon_is_said_plainly(project: Path, tmp_path: Path, start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(lint_check(tmp_path))
    (project / "a.py").write_text("x = 1\n")
    d = start_daemon(project)
    assert devloop("run", str(project)).returncode == 0
    assert "no daemon" not in text(project).stdout
    assert status_json(project)[0]["state"] == "idle"
    d.stop()
    r = text(project)
    assert r.returncode == 0 and r.stdout.splitlines()[1].startswith("no daemon is watching")
    assert status_json(project)[0]["state"] is None
    r = text(project, "--wait")
    assert r.returncode == 69 and "no devloop daemon is watching" in r.stderr


def test_reason_is_the_first_error_line(tmp_path: Path) -> None:
    notes = "".join(f"note: see line {i}\n" for i in range(10))
    (tmp_path / "devloop.toml").write_text(check(
        "mypyish", command=[f"printf 'error: Duplicate module named \"setup\"\\n{notes}'; exit 2"],
        shell=True, patterns=["*.py"]))
    (tmp_path / "a.py").write_text("x = 1\n")
    assert devloop("run", str(tmp_path)).returncode == 1
    r = text(tmp_path)
    assert '| error: Duplicate module named "setup"' in r.stdout
    assert status_json(tmp_path)[0]["reason"].startswith('error: Duplicate module named "setup"')


def test_restart_keeps_failing_state_counters_and_streak(project: Path, tmp_path: Path,
                                                         start_daemon: Start) -> None:
    prom = tmp_path / "devloop.prom"
    (project / "devloop.toml").write_text(
        f"heartbeat_interval = 300\nmetrics_textfile = {json.dumps(str(prom))}\n"
        + lint_check(tmp_path))
    d = start_daemon(project)
    (project / "bad.py").write_text("BAD = 1\n")
    # rewritten after the result, not only every 300 s
    hb = wait_for(lambda: (h := read_heartbeat(project)) and h["checks"]["lint"]["failing"]
                  and h, what="the heartbeat after the result")
    before = hb["checks"]["lint"]
    assert before["runs"] == {"fail": 1} and before["state"] == "idle"
    assert before["failing_since"] is not None and before["last_success_timestamp"] is None
    wait_for(lambda: prom.exists() and 'devloop_check_failing{check="lint"' in prom.read_text()
             and "} 1.0" in prom.read_text().split('devloop_check_failing{check="lint"')[1]
             .splitlines()[0], what="the metrics after the result")
    d.stop()
    start_daemon(project)
    after = read_heartbeat(project)
    assert after is not None
    assert {k: after["checks"]["lint"][k] for k in ("runs", "failing", "failing_since")} == {
        k: before[k] for k in ("runs", "failing", "failing_since")}
    line = prom.read_text().split('devloop_check_failing{check="lint"')[1].splitlines()[0]
    assert line.endswith(" 1.0")


def test_covers_all_for_whole_project_runs(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(lint_check(tmp_path))
    (tmp_path / "a.py").write_text("x = 1\n")
    devloop("run", str(tmp_path))
    assert status_json(tmp_path)[0]["covers_all"] is True
    devloop("run", str(tmp_path), "--files", "a.py")
    assert status_json(tmp_path)[0]["covers_all"] is False


def test_deleted_file_takes_its_failure_along(project: Path, tmp_path: Path,
                                              start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(lint_check(tmp_path))
    (project / "good.py").write_text("x = 1\n")
    start_daemon(project)
    (project / "bad.py").write_text("BAD = 1\n")
    r = text(project, "--wait", "--timeout", "60")
    assert r.returncode == 1 and "bad.py:1:" in r.stdout
    (project / "bad.py").unlink()
    r = text(project, "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout
    assert "bad.py" in r.stdout and "deleted" in r.stdout
    wait_for(lambda: (h := read_heartbeat(project)) and not h["checks"]["lint"]["failing"],
             what="the heartbeat without the failure")


def test_status_is_readable(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(
        lint_check(tmp_path) + check("ok", command=["true"], patterns=["*.py"]))
    (tmp_path / "many.py").write_text("BAD\n" * 25)
    assert devloop("run", str(tmp_path)).returncode == 1
    out = text(tmp_path).stdout.splitlines()
    assert out[:2] == ["2 checks, 1 failing (lint)",
                       f"no daemon is watching {tmp_path}: these results may be stale "
                       f"(start one: devloop watch {tmp_path})"]
    assert sum("many.py:" in ln for ln in out) == 10
    assert "    … 15 more (--all shows every finding)" in out
    assert sum("many.py:" in ln for ln in text(tmp_path, "--all").stdout.splitlines()) == 25
    only = text(tmp_path, "ok").stdout.splitlines()
    assert only[0] == "1 check, 0 failing" and len(only) == 3 and "ok: pass" in only[2]
    assert [e["check"] for e in json.loads(text(tmp_path, "lint", "--json").stdout)] == ["lint"]
    r = text(tmp_path, "nosuch")
    assert r.returncode == 64 and "no check named nosuch" in r.stderr
    assert len(json.loads(text(tmp_path, "--json").stdout)[0]["findings"]) == 25  # not capped


def test_counts_are_shown(tmp_path: Path) -> None:
    state = tmp_path / ".devloop"
    state.mkdir(mode=0o700)
    store = Store.open(state)
    store.record(Run(check="pytest", started=time.time(), duration=1.5, exit_code=1,
                     outcome="fail", files=None, output="", covers_all=True,
                     counts={"passed": 402, "failed": 16, "errors": 0, "skipped": 3},
                     reason="16 failed"), [])
    store.close()
    r = text(tmp_path)
    assert "✗ pytest: fail in 1.50s (whole project, exit 1)" in r.stdout
    assert r.stdout.rstrip().splitlines()[2].endswith(": 16 failed, 402 passed, 3 skipped")
    assert status_json(tmp_path)[0]["counts"]["failed"] == 16


def test_database_of_an_older_devloop_is_read_and_migrated(tmp_path: Path) -> None:
    state = tmp_path / ".devloop"
    state.mkdir(mode=0o700)
    conn = sqlite3.connect(state / "devloop.db")
    conn.executescript("""
        CREATE TABLE runs (id INTEGER PRIMARY KEY, check_name TEXT NOT NULL,
            started REAL NOT NULL, duration REAL NOT NULL, exit_code INTEGER,
            outcome TEXT NOT NULL, files TEXT, output TEXT NOT NULL);
        CREATE TABLE findings (check_name TEXT NOT NULL, file TEXT NOT NULL,
            line INTEGER NOT NULL, col INTEGER, severity TEXT NOT NULL, code TEXT,
            message TEXT NOT NULL, run_id INTEGER NOT NULL);
        INSERT INTO runs VALUES (1, 'lint', 100.0, 1.0, 0, 'pass', NULL, '');
        INSERT INTO runs VALUES (2, 'lint', 200.0, 1.0, 1, 'fail', NULL, 'boom');
    """)
    conn.commit()
    conn.close()
    r = text(tmp_path)
    assert r.returncode == 1 and "lint: fail" in r.stdout
    store = Store.open(state)
    totals = store.totals()["lint"]
    store.close()
    assert (totals.runs, totals.last_success, totals.failing_since) == (
        {"pass": 1, "fail": 1}, 101.0, 201.0)


@pytest.fixture(scope="session")
def click_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """click 8.1.7's sdist from PyPI, fetched once per session."""
    where = tmp_path_factory.mktemp("sdist")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                        "--no-deps", "click==8.1.7", "-d", str(where)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"cannot fetch click's sdist from PyPI: {r.stderr.strip()[-300:]}")
    return where / "click-8.1.7.tar.gz"


def test_real_project_click_wait_shows_the_broken_test(click_sdist: Path, tmp_path: Path,
                                                       start_daemon: Start) -> None:
    subprocess.run(["tar", "-xzf", str(click_sdist), "-C", str(tmp_path)], check=True)
    project = tmp_path / "click-8.1.7"
    (project / "devloop.toml").write_text(check(
        "pytest", command=["env", "PYTHONPATH=src", sys.executable, "-m", "pytest", "-q",
                           "-p", "no:cacheprovider", "tests/test_utils.py"],
        patterns=["*.py"], debounce_ms=100, timeout_s=300))
    start_daemon(project)
    r = text(project, "--wait", "--timeout", "300")
    assert r.returncode == 0, r.stdout + r.stderr
    test_file = project / "tests" / "test_utils.py"
    source = test_file.read_text()
    assert 'assert click.utils.make_str(b"\\xff") == "\\ufffd"' not in source
    broken = source.replace("def test_echo(runner):\n",
                            "def test_echo(runner):\n    assert [1, 2] == [1, 3]\n", 1)
    assert broken != source
    test_file.write_text(broken)
    r = text(project, "--wait", "--timeout", "300")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "✗ pytest: fail" in r.stdout and "tests/test_utils.py" in r.stdout
    [entry] = status_json(project)
    assert entry["state"] == "idle" and entry["stale"] is False
    assert any(f["file"] == "tests/test_utils.py" for f in entry["findings"])


def test_deleted_file_takes_a_whole_project_failure_along(project: Path, tmp_path: Path,
                                                          start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(lint_check(tmp_path, run_on_start=True))
    (project / "good.py").write_text("x = 1\n")
    (project / "bad.py").write_text("BAD = 1\n")
    start_daemon(project)
    r = text(project, "--wait", "--timeout", "60")
    assert r.returncode == 1 and "whole project" in r.stdout and "bad.py:1:" in r.stdout
    (project / "bad.py").unlink()
    r = text(project, "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout
    assert "0 failing" in r.stdout.splitlines()[0]


def test_a_pass_on_one_file_does_not_hide_errors_in_another(project: Path, tmp_path: Path,
                                                            start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(lint_check(tmp_path))
    start_daemon(project)
    (project / "bad.py").write_text("BAD = 1\n")
    assert text(project, "--wait", "--timeout", "60").returncode == 1
    (project / "good.py").write_text("x = 1\n")
    r = text(project, "--wait", "--timeout", "60")
    assert r.returncode == 1, r.stdout
    assert r.stdout.splitlines()[0] == "1 check, 1 failing (lint)"
    assert "✗ lint: pass" in r.stdout and "still failing: 1 errors found earlier" in r.stdout
    [entry] = status_json(project)
    assert (entry["outcome"], entry["failing"], entry["leftover"]) == ("pass", True, 1)
    hb = wait_for(lambda: (h := read_heartbeat(project)) and h["checks"]["lint"]["runs"].get(
        "pass") and h, what="the heartbeat after the pass")
    assert hb["checks"]["lint"]["failing"] is True
    (project / "bad.py").write_text("GOOD = 1\n")
    r = text(project, "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout
    wait_for(lambda: (h := read_heartbeat(project)) and not h["checks"]["lint"]["failing"],
             what="the heartbeat after the fix")


@pytest.mark.parametrize(("output", "expected"), [
    ('error: Duplicate module named "setup"\n' + "note: see\n" * 9, 'error: Duplicate module'),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\nZeroDivisionError: by zero\n",
     "ZeroDivisionError: by zero"),
    ("collecting ...\nE   ImportError: no module x\n", "E   ImportError: no module x"),
    ("something broke\nsecond\nthird\nfourth\n", "something broke\nsecond\nthird"),
])
def test_reason_of_a_failure_without_findings(output: str, expected: str) -> None:
    run = Run(check="c", started=0.0, duration=0.0, exit_code=1, outcome="fail", files=None,
              output=output)
    got = results.reason(CheckState(run=run, run_id=1, findings=()))
    assert got is not None and got.startswith(expected)


def test_a_check_removed_while_no_daemon_ran_does_not_block_wait(
        project: Path, tmp_path: Path, start_daemon: Start) -> None:
    (project / "a.py").write_text("x = 1\n")
    (project / "devloop.toml").write_text(
        lint_check(tmp_path) + check("gone", command=["false"], patterns=["*.py"]))
    assert devloop("run", str(project)).returncode == 1
    (project / "devloop.toml").write_text(lint_check(tmp_path))
    start_daemon(project)
    r = text(project, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gone" not in r.stdout


def test_wait_after_deleting_a_passing_file(project: Path, tmp_path: Path,
                                            start_daemon: Start) -> None:
    """A deletion queues the check, which then has nothing to run on: it is idle again
    (the debounce is long enough for the waiter to see it queued first)."""
    (project / "devloop.toml").write_text(lint_check(tmp_path, debounce_ms=1500))
    (project / "a.py").write_text("x = 1\n")
    (project / "b.py").write_text("x = 1\n")
    start_daemon(project)
    (project / "a.py").write_text("x = 2\n")
    assert text(project, "--wait", "--timeout", "60").returncode == 0
    (project / "b.py").unlink()
    r = text(project, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_output_cannot_drive_the_terminal(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(check(
        "evil", command=["printf 'a.py:1: error: \\033[2J\\rgone\\n\\033]0;title\\007\\n'; exit 1"],
        shell=True, patterns=["*.py"]))
    (tmp_path / "a.py").write_text("x = 1\n")
    devloop("run", str(tmp_path))
    out = text(tmp_path).stdout
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "a.py:1: error: \\x1b[2J" in out


OTHER_USER = "devloop-results-other"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add a user")
def test_another_users_private_results_are_one_clear_line(tmp_path: Path) -> None:
    """The stdlib Python of the system runs the CLI as that user (this venv's Python may
    sit in root's home); it shares the venv's packages."""
    python = Path("/usr/bin/python3")
    if not python.exists() or subprocess.run(
            [str(python), "-c", "import sys; assert sys.version_info[:2] == (3, 11)"]
    ).returncode:
        pytest.skip("no system Python 3.11 to run the CLI as another user")
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode:
        subprocess.run(["useradd", "--no-create-home", OTHER_USER], check=True)
    project = Path(tempfile.mkdtemp(prefix="devloop-other-", dir="/tmp"))
    try:
        project.chmod(0o755)
        (project / "devloop.toml").write_text(check("ok", command=["true"], patterns=["*"]))
        assert devloop("run", str(project)).returncode == 0
        site = next(Path(sys.prefix).glob("lib/python3.11/site-packages"))
        path = f"{Path(__file__).resolve().parents[1]}:{site}"
        probe = subprocess.run(["su", OTHER_USER, "-s", "/bin/sh", "-c",
                                f'PYTHONPATH="$1" {python} -c "import devloop.cli"', "sh", path],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode:
            pytest.skip(f"{OTHER_USER} cannot import this checkout: {probe.stderr[-200:]}")
        for extra in ([], ["--wait"]):
            r = subprocess.run(
                ["su", OTHER_USER, "-s", "/bin/sh", "-c",
                 f'PYTHONPATH="$1" {python} -m devloop status "$2" {" ".join(extra)}',
                 "sh", path, str(project)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 66, r
            assert r.stderr.strip() == (f"devloop: error: cannot read {project}/.devloop/"
                                        "devloop.db: Permission denied"), r
    finally:
        shutil.rmtree(project)
