"""Prometheus metrics from a real daemon: printed, written as a textfile, served over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

from ops_helpers import background, devloop, devloop_exe, make_project, wait_for
from prometheus_client.parser import text_string_to_metric_families

TOML = """heartbeat_interval = 1
{extra}
[checks.good]
command = ["true"]
patterns = ["*.txt"]
[checks.bad]
command = ["false"]
patterns = ["*.txt"]
"""

NAMES = {"devloop_up", "devloop_build_info", "devloop_uptime_seconds",
         "devloop_last_heartbeat_timestamp_seconds", "devloop_check_runs_total",
         "devloop_check_duration_seconds", "devloop_check_last_success_timestamp_seconds",
         "devloop_check_failing", "devloop_watches", "devloop_rescans_total"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _both_ran(project: Path) -> bool:
    hb = project / ".devloop" / "daemon.heartbeat"
    try:
        checks = json.loads(hb.read_text())["checks"]
    except (OSError, ValueError, KeyError):
        return False
    return all(checks[c]["runs"] for c in ("good", "bad"))


def test_metrics_text_and_textfile(tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "devloop.prom"
    prom.parent.mkdir()
    project = make_project(tmp_path / "p", TOML.format(extra=f'metrics_textfile = "{prom}"'))
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        wait_for(lambda: _both_ran(project), what="both checks in the heartbeat")
        out = devloop("metrics", str(project))
        assert out.returncode == 0, out.stderr
        got = samples(out.stdout)
        names = {name for name, _ in got}
        assert names >= NAMES, NAMES - names
        p = ("project", str(project))
        assert got[("devloop_up", (p,))] == 1
        assert got[("devloop_watches", (p,))] >= 1
        assert got[("devloop_rescans_total", (p,))] == 0
        assert got[("devloop_check_runs_total",
                    (("check", "bad"), ("outcome", "fail"), p))] >= 1
        assert got[("devloop_check_runs_total",
                    (("check", "good"), ("outcome", "pass"), p))] >= 1
        assert got[("devloop_check_failing", (("check", "bad"), p))] == 1
        assert got[("devloop_check_failing", (("check", "good"), p))] == 0
        assert ("devloop_check_last_success_timestamp_seconds", (("check", "good"), p)) in got
        assert ("devloop_check_last_success_timestamp_seconds",
                (("check", "bad"), p)) not in got

        # the daemon's node_exporter textfile: same families, written atomically, 0644
        text = wait_for(lambda: prom.exists() and _both_ran(project) and
                        'check="bad"' in prom.read_text() and prom.read_text(),
                        what="the textfile")
        assert {name for name, _ in samples(text)} >= NAMES
        assert prom.stat().st_mode & 0o777 == 0o644
        assert [f.name for f in prom.parent.iterdir()] == ["devloop.prom"]  # no temp left
    down = samples(devloop("metrics", str(project)).stdout)
    assert down[("devloop_up", (("project", str(project)),))] == 0


def test_bad_metrics_textfile_is_a_config_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", TOML.format(extra='metrics_textfile = "rel.prom"'))
    r = devloop("watch", "--foreground", str(project))
    assert r.returncode == 78
    assert "metrics_textfile" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unwritable_textfile_is_logged_not_fatal(tmp_path: Path) -> None:
    prom = tmp_path / "missing-dir" / "devloop.prom"
    project = make_project(tmp_path / "p", TOML.format(extra=f'metrics_textfile = "{prom}"'))
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        log = project / ".devloop" / "devloop.log"
        wait_for(lambda: "cannot write metrics" in log.read_text(), what="the error logged")
        assert devloop("daemon-status", str(project)).returncode == 0


def test_http_endpoint_serves_several_projects(tmp_path: Path) -> None:
    a = make_project(tmp_path / "a", TOML.format(extra=""))
    b = make_project(tmp_path / "b", TOML.format(extra=""))
    with background(a) as r:
        assert r.returncode == 0, r.stderr
        server = subprocess.Popen([devloop_exe(), "metrics", "--listen", "127.0.0.1:0",
                                   str(a), str(b)], stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None
            line = server.stderr.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
            assert m, line
            url = f"http://127.0.0.1:{m.group(1)}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                got = samples(resp.read().decode())
            assert got[("devloop_up", (("project", str(a)),))] == 1
            assert got[("devloop_up", (("project", str(b)),))] == 0
            assert ("devloop_watches", (("project", str(a)),)) in got
        finally:
            server.terminate()
            assert server.wait(10) == 0


def test_listen_bad_address_is_usage_error(tmp_path: Path) -> None:
    r = devloop("metrics", "--listen", "nonsense", str(tmp_path))
    assert r.returncode == 64 and "HOST:PORT" in r.stderr
