"""The shipped monitoring set-up, proven with the real tools from Debian's packages.

promtool (check rules/config/metrics, test rules), a real Prometheus scraping
`devloop metrics --listen` and a real node_exporter's textfile collector, `nagios4 -v` on
the shipped definitions, and NRPE running as its own user answering check_nrpe.
`.ci/run` installs them (prometheus, prometheus-node-exporter, nagios4-core,
nagios-nrpe-server, nagios-nrpe-plugin).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_helpers import REPO, alive, background, devloop, lock_pid, make_project, wait_for

PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
NAGIOS = "/usr/sbin/nagios4"
NRPE = "/usr/sbin/nrpe"
CHECK_NRPE = "/usr/lib/nagios/plugins/check_nrpe"
ALERTS = REPO / "packaging" / "prometheus" / "alerts.yml"


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if not os.access(t, os.X_OK)]
    return pytest.mark.skipif(bool(missing), reason=f"{missing} not installed (.ci/run)")


TOML = """heartbeat_interval = 1
{extra}
[checks.bad]
command = ["false"]
patterns = ["*.txt"]
"""


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=120,
                          check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(*argv: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read().decode()  # type: ignore[no-any-return]
    except OSError:
        return None


# -- promtool -----------------------------------------------------------------------------

@needs(PROMTOOL)
def test_promtool_rules_config_and_unit_tests(tmp_path: Path) -> None:
    r = run(PROMTOOL, "check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text((REPO / "packaging" / "prometheus" / "scrape.yml").read_text()
                      .replace("/etc/prometheus/devloop-alerts.yml", str(ALERTS)))
    r = run(PROMTOOL, "check", "config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(PROMTOOL, "test", "rules", str(REPO / "tests" / "prometheus" / "alerts_test.yml"))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@needs(PROMTOOL)
def test_promtool_check_metrics(tmp_path: Path) -> None:
    prom = tmp_path / "devloop.prom"
    project = make_project(tmp_path / "p", TOML.format(extra=f'metrics_textfile = "{prom}"'))
    corrupt = tmp_path / "corrupt"
    (corrupt / ".devloop").mkdir(parents=True)
    (corrupt / ".devloop" / "daemon.heartbeat").write_text("[" * 60_000)
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        wait_for(lambda: prom.exists() and 'check="bad"' in prom.read_text(),
                 what="the textfile with the check")
        text = devloop("metrics", str(project), str(corrupt), str(tmp_path / "missing")).stdout
        for exposition in (text, prom.read_text()):
            r = run(PROMTOOL, "check", "metrics", stdin=exposition)
            assert r.returncode == 0 and not r.stdout + r.stderr, r.stdout + r.stderr
    r = run(PROMTOOL, "check", "metrics", stdin=prom.read_text())  # after the clean stop
    assert r.returncode == 0 and "devloop_up" in prom.read_text(), r.stdout + r.stderr


# -- a real Prometheus, node_exporter and `devloop metrics --listen` ----------------------

class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        text = http_get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if text is None:
            return []
        data = json.loads(text)
        assert data["status"] == "success", data
        return data["data"]["result"]  # type: ignore[no-any-return]

    def series(self, expr: str) -> set[tuple[str, str]]:
        """(job, project) of each series the expression returns."""
        return {(s["metric"].get("job", ""), s["metric"].get("project", ""))
                for s in self.query(expr)}


@needs(PROMETHEUS, NODE_EXPORTER)
def test_real_prometheus_sees_failing_check_and_kill_through_both_routes(
        tmp_path: Path) -> None:
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    # `served` goes through --listen (and writes a textfile too: two projects' files in one
    # directory must not collide); `texted` only through node_exporter's textfile collector
    served = make_project(tmp_path / "served", TOML.format(
        extra=f'metrics_textfile = "{textdir}/devloop-served.prom"'))
    texted = make_project(tmp_path / "texted", TOML.format(
        extra=f'metrics_textfile = "{textdir}/devloop-texted.prom"'))
    node_port, listen_port, prom_port = free_port(), free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: devloop
    static_configs: [{{targets: ["127.0.0.1:{listen_port}"]}}]
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{node_port}"]}}]
""")
    with contextlib.ExitStack() as stack:
        for project in (served, texted):
            r = stack.enter_context(background(project))
            assert r.returncode == 0, r.stderr
        stack.enter_context(process(
            NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}",
            "--collector.disable-defaults", "--collector.textfile",
            f"--collector.textfile.directory={textdir}", log=tmp_path / "node.log"))
        stack.enter_context(process(
            sys.executable, "-m", "devloop", "metrics", "--listen",
            f"127.0.0.1:{listen_port}", str(served), log=tmp_path / "listen.log"))
        stack.enter_context(process(
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", log=tmp_path / "prometheus.log"))
        prom = Prometheus(prom_port)

        both = {("devloop", str(served)), ("node", str(served)), ("node", str(texted))}
        wait_for(lambda: prom.series('devloop_check_failing{check="bad"} == 1') == both,
                 timeout=60, what="the failing check through both routes")
        assert prom.series("devloop_up == 1") == both
        assert prom.series("devloop_build_info") == both  # one per project: no collision
        assert [s["value"][1] for s in prom.query("node_textfile_scrape_error")] == ["0"]
        assert prom.series('ALERTS{alertname="DevloopHeartbeatStale"}') == set()
        # fields the daemon adds to its heartbeat (results: failing_since; watch: overflows)
        beat = json.loads((served / ".devloop" / "daemon.heartbeat").read_text())
        if beat["checks"]["bad"].get("failing_since") is not None:
            assert prom.series("devloop_check_failing_since_timestamp_seconds") == both
        if "overflows" in beat:
            assert prom.series("devloop_overflows_total == 0") == both

        for project in (served, texted):
            pid = lock_pid(project)
            assert pid
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda pid=pid: not alive(pid), what="the daemon killed")
        # --listen sees the dead PID at once; the textfile keeps devloop_up 1, but its
        # heartbeat timestamp stops: the stale rule (against the exported interval) fires
        wait_for(lambda: prom.series("devloop_up == 0") == {("devloop", str(served))},
                 timeout=60, what="devloop_up 0 through --listen")
        wait_for(lambda: prom.series('ALERTS{alertname="DevloopHeartbeatStale"}') == both,
                 timeout=60, what="the kill seen through the textfile too")
        assert prom.series("devloop_up == 1") == {("node", str(served)), ("node", str(texted))}


# -- Nagios -------------------------------------------------------------------------------

@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary directory other users may read (pytest's own is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="devloop-monitoring-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs(NAGIOS)
def test_nagios4_verifies_the_shipped_definitions(public_tmp: Path) -> None:
    """nagios4 reads its object files as the nagios user."""
    tmp_path = public_tmp
    (tmp_path / "host.cfg").write_text(
        "define host {\n use linux-server\n host_name devbox\n address 127.0.0.1\n}\n")
    cfg = tmp_path / "nagios.cfg"
    objects = ["/etc/nagios4/objects/commands.cfg", "/etc/nagios4/objects/contacts.cfg",
               "/etc/nagios4/objects/timeperiods.cfg", "/etc/nagios4/objects/templates.cfg",
               str(tmp_path / "host.cfg"), str(REPO / "packaging" / "nagios" / "devloop.cfg")]
    results = tmp_path / "results"
    subprocess.run(["install", "-d", "-o", "nagios", "-g", "nagios", results], check=True)
    cfg.write_text("".join(f"cfg_file={o}\n" for o in objects) + f"""
cfg_dir=/etc/nagios-plugins/config
log_file={tmp_path}/nagios.log
resource_file=/etc/nagios4/resource.cfg
temp_file={tmp_path}/nagios.tmp
lock_file={tmp_path}/nagios.lock
check_result_path={results}
illegal_macro_output_chars=`~$&|'"<>
""")
    r = run(NAGIOS, "-v", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Total Warnings: 0" in r.stdout and "Total Errors:   0" in r.stdout, r.stdout


# -- NRPE, as its own user ----------------------------------------------------------------

OWNER = "devloop-mon-owner"


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A world-readable directory with a venv of the system Python that sees this checkout
    (the test venv's interpreter may live where other users cannot execute it), and an
    unprivileged project owner."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a real second user and NRPE dropping to its own")
    base = Path(tempfile.mkdtemp(prefix="devloop-monitoring-", dir="/var/tmp"))
    base.chmod(0o755)
    made_user = False
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", base / "venv"],
                       check=True)
        site = next((base / "venv" / "lib").glob("python3*/site-packages"))
        import prometheus_client  # the test venv's packages: the daemon's dependencies
        deps = Path(prometheus_client.__file__).parents[1]
        (site / "devloop-checkout.pth").write_text(f"{REPO}\n{deps}\n")
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", OWNER],
                           check=True)
            made_user = True
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if made_user:
            subprocess.run(["userdel", OWNER], check=False)


def as_owner(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", OWNER, "--", str(base / "venv" / "bin" / "python"),
                           "-m", "devloop", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd="/")


@needs(NRPE, CHECK_NRPE)
def test_nrpe_as_its_own_user_healthy_killed_unreadable(shared: Path) -> None:
    base = Path(tempfile.mkdtemp(dir=shared))
    base.chmod(0o755)
    shipped = (REPO / "packaging" / "nagios" / "nrpe-devloop.cfg").read_text()
    line = next(x for x in shipped.splitlines() if x.startswith("command["))
    python = f"{shared}/venv/bin/python -m devloop"
    commands, projects = [], {}
    for name in ("healthy", "killed", "unreadable"):
        health = base / "health" / name
        project = base / "projects" / name
        extra = "" if name == "unreadable" else f'health_file = "{health}/health.json"'
        make_project(project, TOML.format(extra=extra))
        subprocess.run(["chown", "-R", OWNER, base / "projects"], check=True)
        # as the operator documents it: the owner writes, group nagios reads (setgid)
        subprocess.run(["install", "-d", "-o", OWNER, "-g", "nagios", "-m", "2750", health],
                       check=True)
        cmd = (line.replace("check_devloop_proj", f"check_devloop_{name}")
               .replace("/opt/devloop/bin/devloop", python)
               .replace("/home/alice/dev/proj", str(project))
               .replace("/var/lib/devloop-health/proj", str(health)))
        if name == "unreadable":  # no published copy: only the private .devloop/ is there
            cmd = cmd.replace(f" --health-file {health}/health.json", "")
        commands.append(cmd)
        projects[name] = project
    port = free_port()
    cfg = base / "nrpe.cfg"
    cfg.write_text("\n".join([
        f"pid_file={base}/nrpe.pid", f"server_port={port}", "server_address=127.0.0.1",
        "nrpe_user=nagios", "nrpe_group=nagios", "allowed_hosts=127.0.0.1",
        "dont_blame_nrpe=0", "command_timeout=60", "command[whoami]=/usr/bin/id -un",
        *commands]) + "\n")

    def check_nrpe(command: str) -> tuple[int, str]:
        r = run(CHECK_NRPE, "-H", "127.0.0.1", "-p", str(port), "-t", "60", "-c", command)
        return r.returncode, r.stdout.strip()

    try:
        for name in ("healthy", "killed", "unreadable"):
            r = as_owner(shared, "watch", str(projects[name]))
            assert r.returncode == 0, r.stderr
        for name in ("healthy", "killed"):
            wait_for(lambda name=name: (base / "health" / name / "health.json").exists(),
                     what="the published heartbeat")
        pid = lock_pid(projects["killed"])
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), what="the daemon killed")
        with process(NRPE, "-c", str(cfg), "-f", log=base / "nrpe.log"):
            wait_for(lambda: check_nrpe("whoami")[0] == 0, what="NRPE answering")
            assert check_nrpe("whoami") == (0, "nagios")
            code, out = check_nrpe("check_devloop_healthy")
            assert code == 0 and out.startswith("DEVLOOP OK - last heartbeat"), out
            code, out = check_nrpe("check_devloop_killed")
            assert code == 2 and f"daemon PID {pid} is not running" in out, out
            code, out = check_nrpe("check_devloop_unreadable")
            assert code == 3 and "Permission denied" in out, out
        # what stays private: the results database and the log
        state = projects["healthy"] / ".devloop"
        assert state.stat().st_mode & 0o777 == 0o700
        published = base / "health" / "healthy" / "health.json"
        assert published.stat().st_mode & 0o777 == 0o640
        assert published.stat().st_gid == pwd.getpwnam("nagios").pw_gid
    finally:
        for project in projects.values():
            as_owner(shared, "stop", str(project))
    assert not (base / "health" / "healthy" / "health.json").exists()  # a clean stop
