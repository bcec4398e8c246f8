"""`devloop daemon-status --nagios`: the plugin line and exit codes, against a real daemon."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ops_helpers import background, devloop, make_project, wait_for

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
    return r.returncode, line


def test_ok_warning_critical_unknown(tmp_path: Path) -> None:
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
    # a heartbeat left by a daemon that died (SIGKILL leaves it): CRITICAL
    state = project / ".devloop"
    old = {"timestamp": (datetime.now(UTC) - timedelta(seconds=90)).isoformat(),
           "pid": os.getpid(), "uptime_seconds": 5, "interval_seconds": 30,
           "project": str(project), "watches": 1, "rescans": 0, "problem": None, "checks": {}}
    (state / "daemon.heartbeat").write_text(json.dumps(old))
    code, line = nagios(project)  # 90s old, thresholds 60/120: WARNING
    assert code == 1 and "last heartbeat 90s ago" in line, line
    code, line = nagios(project, "--critical", "80")
    assert code == 2, line
    (state / "daemon.heartbeat").write_text("{not json")
    code, line = nagios(project)
    assert code == 3 and line.startswith("DEVLOOP UNKNOWN"), line


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
    state = project / ".devloop"
    state.mkdir()
    fresh = {"timestamp": datetime.now(UTC).isoformat(), "pid": os.getpid(),
             "uptime_seconds": 5, "interval_seconds": 30, "project": str(project),
             "watches": 1, "rescans": 0, "problem": None, "checks": {}}
    (state / "daemon.heartbeat").write_text(json.dumps(fresh))
    code, line = nagios(project)  # this pytest process is no `devloop watch`
    assert code == 2 and "not a devloop daemon" in line
