"""Prometheus metrics from a real daemon: printed, written as a textfile, served over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ops_helpers import background, devloop, devloop_exe, make_project, wait_for
from prometheus_client.parser import text_string_to_metric_families

from devloop import __version__

TOML = """heartbeat_interval = 1
{extra}
[checks.good]
command = ["true"]
patterns = ["*.txt"]
[checks.bad]
command = ["false"]
patterns = ["*.txt"]
"""

NAMES = {"devloop_up", "devloop_build_info", "devloop_start_time_seconds",
         "devloop_heartbeat_corrupt", "devloop_heartbeat_interval_seconds",
         "devloop_last_heartbeat_timestamp_seconds", "devloop_check_runs_total",
         "devloop_check_last_duration_seconds", "devloop_check_last_success_timestamp_seconds",
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
        assert got[("devloop_build_info", (p, ("version", __version__)))] == 1
        assert got[("devloop_heartbeat_interval_seconds", (p,))] == 1
        assert got[("devloop_heartbeat_corrupt", (p,))] == 0
        started = got[("devloop_start_time_seconds", (p,))]
        assert started <= got[("devloop_last_heartbeat_timestamp_seconds", (p,))]
    down = samples(devloop("metrics", str(project)).stdout)
    assert down[("devloop_up", (("project", str(project)),))] == 0
    # a clean stop leaves devloop_up 0 in the textfile, and no heartbeat to go stale
    stopped = samples(prom.read_text())
    assert stopped[("devloop_up", (("project", str(project)),))] == 0
    assert {n for n, _ in stopped} == {"devloop_up", "devloop_build_info",
                                       "devloop_heartbeat_corrupt"}


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


def _heartbeat(project: Path, content: str | dict[str, object]) -> Path:
    (project / ".devloop").mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps({"timestamp": datetime.now(UTC).isoformat(), "pid": os.getpid(),
                              "uptime_seconds": 5, "interval_seconds": 30,
                              "project": str(project), "watches": 1, "rescans": 0,
                              "problem": None, "checks": {}, **content})
    (project / ".devloop" / "daemon.heartbeat").write_text(content)
    return project


@contextlib.contextmanager
def listening(*projects: Path) -> Iterator[str]:
    server = subprocess.Popen([devloop_exe(), "metrics", "--listen", "127.0.0.1:0",
                               *map(str, projects)], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, line
        yield f"127.0.0.1:{m.group(1)}"
    finally:
        server.terminate()
        assert server.wait(10) == 0


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as resp:
        assert resp.status == 200
        return resp.read().decode()  # type: ignore[no-any-return]


def test_bad_heartbeats_spoil_no_other_project(tmp_path: Path) -> None:
    """Nested, NaN, negative, missing: each project says so alone; the others are served."""
    nested = _heartbeat(tmp_path / "nested", "[" * 60_000)
    nan = _heartbeat(tmp_path / "nan", '{"pid": 1, "uptime_seconds": 1, "watches": NaN}')
    negative = _heartbeat(tmp_path / "negative", {"rescans": -5})
    missing = tmp_path / "missing"
    good = make_project(tmp_path / "good", TOML.format(extra=""))
    with background(good) as r:
        assert r.returncode == 0, r.stderr
        out = devloop("metrics", *map(str, (nested, nan, negative, missing, good)))
        assert out.returncode == 0 and out.stderr == "", out.stderr
        with listening(nested, nan, negative, missing, good) as address:
            served = scrape(address)
    for text in (out.stdout, served):
        got = samples(text)
        assert "NaN" not in text and not [k for k, v in got.items() if v < 0]
        for project, corrupt in ((nested, 1), (nan, 1), (negative, 1), (missing, 0)):
            p = (("project", str(project)),)
            assert got[("devloop_up", p)] == 0
            assert got[("devloop_heartbeat_corrupt", p)] == corrupt
            assert ("devloop_rescans_total", p) not in got
        assert got[("devloop_up", (("project", str(good)),))] == 1


def test_optional_fields_exported_only_when_present(tmp_path: Path) -> None:
    """overflows (apart from rescans) and failing_since, from the watcher and the database."""
    old = _heartbeat(tmp_path / "old", {"checks": {"c": {"failing": True}}})
    new = _heartbeat(tmp_path / "new", {"rescans": 6, "overflows": 1, "checks": {
        "c": {"failing": True, "failing_since": 1700000000.5},
        "d": {"failing": False, "failing_since": None}}})
    got = samples(devloop("metrics", str(old), str(new)).stdout)
    o, n = ("project", str(old)), ("project", str(new))
    assert ("devloop_overflows_total", (o,)) not in got
    assert got[("devloop_overflows_total", (n,))] == 1
    assert got[("devloop_rescans_total", (n,))] == 6
    since = "devloop_check_failing_since_timestamp_seconds"
    assert (since, (("check", "c"), o)) not in got
    assert got[(since, (("check", "c"), n))] == 1700000000.5
    assert (since, (("check", "d"), n)) not in got


def test_listen_serves_while_a_client_stalls(tmp_path: Path) -> None:
    """A client that trickles a request for ever held the old one-at-a-time server."""
    with listening(tmp_path) as address:
        host, port = address.split(":")
        done = threading.Event()
        slow = socket.create_connection((host, int(port)), timeout=30)

        def trickle() -> None:
            with contextlib.suppress(OSError):
                slow.sendall(b"GET /metrics HTTP/1.1\r\n")
                while not done.wait(0.5):
                    slow.sendall(b"X-Slow: 1\r\n")

        t = threading.Thread(target=trickle)
        t.start()
        try:
            assert "devloop_up" in scrape(address)
        finally:
            done.set()
            t.join()
            slow.close()


def test_bad_health_file_is_a_config_error(tmp_path: Path) -> None:
    for value in ("rel.json", "/abs/health.txt", "/abs/new\\nline.json"):
        project = make_project(tmp_path / "p", TOML.format(extra=f'health_file = "{value}"'))
        r = devloop("watch", "--foreground", str(project))
        assert r.returncode == 78, r.stderr
        assert "health_file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unwritable_health_file_is_a_reported_problem(tmp_path: Path) -> None:
    """Monitoring that reads the published copy would see nothing: say so, once."""
    missing = tmp_path / "missing-dir"
    project = make_project(tmp_path / "p", TOML.format(
        extra=f'health_file = "{missing}/health.json"'))
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        wait_for(lambda: f"cannot write the heartbeat in {missing}" in
                 devloop("daemon-status", str(project)).stdout, what="the problem reported")
        missing.mkdir()
        wait_for(lambda: devloop("daemon-status", str(project)).returncode == 0,
                 what="healthy once it can publish")
        published = missing / "health.json"
        assert published.stat().st_mode & 0o777 == 0o640
    assert not published.exists()


def test_random_heartbeats_never_export_nan_or_negative(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from devloop import metrics

    project = tmp_path / "p"
    values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    check = st.fixed_dictionaries({}, optional={
        "runs": st.dictionaries(st.text(max_size=4), values, max_size=2) | values,
        "last_duration_seconds": values, "last_success_timestamp": values,
        "failing_since": values, "failing": values})
    doc = st.fixed_dictionaries({}, optional={
        "watches": values, "rescans": values, "overflows": values, "uptime_seconds": values,
        "interval_seconds": values, "problem": values,
        "checks": st.dictionaries(st.text(max_size=4), check, max_size=2) | values})

    @settings(max_examples=300, deadline=None)
    @given(fields=doc)
    def one(fields: dict[str, object]) -> None:
        base: dict[str, object] = {"timestamp": datetime.now(UTC).isoformat(),
                                   "pid": os.getpid(), "uptime_seconds": 5}
        _heartbeat(project, json.dumps({**base, **fields}))  # NaN/Infinity included
        text = metrics.exposition([project])
        got = samples(text)
        assert "NaN" not in text and "Inf" not in text
        assert all(v >= 0 for v in got.values())
        corrupt = got[("devloop_heartbeat_corrupt", (("project", str(project)),))]
        assert corrupt == (("devloop_watches", (("project", str(project)),)) not in got
                           and ("devloop_start_time_seconds",
                                (("project", str(project)),)) not in got)

    one()


def test_service_install_lets_the_sandbox_write_the_published_files(tmp_path: Path) -> None:
    """docs/production.md: `service install` adds both directories to ReadWritePaths=."""
    project = make_project(tmp_path / "p", TOML.format(
        extra='metrics_textfile = "/var/lib/prometheus/node-exporter/devloop-p.prom"\n'
              'health_file = "/var/lib/devloop-health/p/health.json"'))
    r = devloop("service", "install", "p", "--dir", str(project), "--root",
                str(tmp_path / "root"), "--print",
                *(["--allow-root"] if os.geteuid() == 0 else []))  # a project root owns
    assert r.returncode == 0, r.stderr
    assert 'ReadWritePaths="-/var/lib/prometheus/node-exporter"\n' in r.stdout
    assert 'ReadWritePaths="-/var/lib/devloop-health/p"\n' in r.stdout
