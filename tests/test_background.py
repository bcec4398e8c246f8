"""`devloop watch DIR` without --foreground, and `devloop stop DIR`, with a real daemon."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ops_helpers import alive, background, devloop, lock_pid, make_project, processes_in, wait_for

TOML = """heartbeat_interval = 1
[checks.slow]
command = ["sh", "-c", "echo bg-check-{mark} started; sleep 300; true"]
patterns = ["*.txt"]
"""


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_detaches_reports_ready_and_stop_leaves_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML.format(mark=tmp_path.name))
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        m = re.search(r"daemon PID (\d+) is ready", r.stdout)
        assert m, r.stdout
        pid = int(m.group(1))
        assert lock_pid(project) == pid
        # properly detached: own session, no tty, stdio on /dev/null, umask 022, cwd /
        st = _status(pid)
        assert st["Umask"].strip() == "0022"
        assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid  # double fork
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        tty = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4]
        assert tty == "0"
        health = devloop("daemon-status", str(project))
        assert health.returncode == 0, health.stdout
        log = project / ".devloop" / "devloop.log"
        assert "watching" in wait_for(lambda: log.read_text(), what="log")
        check = wait_for(lambda: processes_in(project, f"bg-check-{tmp_path.name}"),
                         what="the check to run")

        stop = devloop("stop", str(project))
        assert stop.returncode == 0, stop.stderr
        assert f"PID {pid}" in stop.stdout
        assert not alive(pid)  # stop waited for the exit
        assert not any(alive(c) for c in check)
        assert not (project / ".devloop" / "daemon.heartbeat").exists()
        again = devloop("daemon-status", str(project))
        assert again.returncode == 1 and "not running" in again.stdout
        assert "no daemon" in devloop("stop", str(project)).stdout


def test_second_daemon_fails_with_its_status(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML.format(mark=tmp_path.name))
    with background(project) as first:
        assert first.returncode == 0, first.stderr
        second = devloop("watch", str(project))
        assert second.returncode == 75
        assert "already watching" in second.stderr and "exited with status 75" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1


def test_bad_config_is_reported_before_detaching(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", "max_parallel = 0\n[checks.a]\n"
                           'command = ["true"]\npatterns = ["*"]\n')
    r = devloop("watch", str(project))
    assert r.returncode == 78
    assert "max_parallel" in r.stderr and "Traceback" not in r.stderr
    assert lock_pid(project) is None


def test_missing_dir_is_66(tmp_path: Path) -> None:
    r = devloop("watch", str(tmp_path / "nope"))
    assert r.returncode == 66 and len(r.stderr.strip().splitlines()) == 1


def test_log_rotates_by_size(tmp_path: Path) -> None:
    toml = """heartbeat_interval = 1
[checks.quick]
command = ["true"]
patterns = ["*.txt"]
debounce_ms = 0
"""
    project = make_project(tmp_path / "p", toml)
    with background(project, "--log-max-bytes", "400", "--log-backups", "2") as r:
        assert r.returncode == 0, r.stderr
        state = project / ".devloop"

        def runs() -> int:
            return sum(p.read_text().count("check quick pass") for p in state.glob("devloop.log*"))

        for i in range(60):
            if (state / "devloop.log.2").exists():
                break
            before = runs()
            (project / f"f{i}.txt").write_text("x")
            wait_for(lambda before=before: runs() > before  # type: ignore[misc]
                     or (state / "devloop.log.2").exists(), what=f"run {i}")
        wait_for(lambda: (state / "devloop.log.2").exists(), what="two rotations")
        assert not (state / "devloop.log.3").exists()
        assert all(p.stat().st_size <= 400 for p in state.glob("devloop.log*"))


def test_stop_refuses_a_pid_that_does_not_hold_the_lock(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML.format(mark=tmp_path.name))
    state = project / ".devloop"
    state.mkdir()
    (state / "daemon.lock").write_text(f"{os.getpid()}\n")  # stale: nobody holds the flock
    r = devloop("stop", str(project))
    assert r.returncode == 0 and "no daemon" in r.stdout
    assert alive(os.getpid())
