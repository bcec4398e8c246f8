"""The supervisord program template and `service install --supervisor`, with a real supervisord."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_helpers import REPO, alive, devloop, devloop_exe, make_project, processes_in, wait_for

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "supervisord").exists() and not
                                shutil.which("supervisord"), reason="pip install supervisor")

MAIN = """[unix_http_server]
file={tmp}/supervisor.sock
chmod=0700

[supervisord]
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}/logs
nodaemon=true
silent=true
{user}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp}/supervisor.sock

[include]
files = {tmp}/conf.d/*.conf
"""


def _tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else str(shutil.which(name))


class Supervisor:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.conf = tmp / "supervisord.conf"
        tmp.mkdir()
        (tmp / "conf.d").mkdir()
        (tmp / "logs").mkdir()
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(MAIN.format(tmp=tmp, user=f"user={me}" if me == "root" else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([_tool("supervisord"), "-c", str(self.conf)], env=env,
                                     start_new_session=True, stdin=subprocess.DEVNULL)

    def ctl(self, *args: str) -> str:
        return subprocess.run([_tool("supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60).stdout

    def running_pid(self, program: str, not_pid: int | None = None) -> int | None:
        m = re.search(r"RUNNING\s+pid (\d+)", self.ctl("status", program))
        return int(m.group(1)) if m and int(m.group(1)) != not_pid else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(tmp_path / "sup")
    try:
        yield s
    finally:
        s.stop()


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PROJECT_DIR": str(project),
            "PATH": f"{Path(devloop_exe()).parent}:{os.environ.get('PATH', '')}"}


def _heartbeat_pid(project: Path) -> int | None:
    r = devloop("daemon-status", str(project), "--json")
    m = re.search(r'"pid": (\d+)', r.stdout)
    return int(m.group(1)) if r.returncode == 0 and m else None


def test_template_healthy_restart_stop_and_rotation(tmp_path: Path,
                                                    supervisor: Supervisor) -> None:
    marker = f"sup-check-{tmp_path.name}"
    project = make_project(tmp_path / "proj", f"""heartbeat_interval = 1
[checks.slow]
command = ["sh", "-c", "echo {marker}; sleep 300; true"]
patterns = ["*.slow"]
run_on_start = false
[checks.chatty]
command = ["true"]
patterns = ["*.txt"]
debounce_ms = 0
run_on_start = false
""")
    template = (REPO / "packaging" / "supervisor" / "devloop.conf").read_text()
    me = pwd.getpwuid(os.geteuid()).pw_name
    # the two settings the template asks for (the directory comes from PROJECT_DIR), and a
    # small log size so that rotation shows in a few check runs
    test_copy = (template.replace("user=devloop", f"user={me}")
                 .replace("stdout_logfile_maxbytes=10MB", "stdout_logfile_maxbytes=1KB"))
    assert test_copy.count(f"user={me}") == 1 and "maxbytes=1KB" in test_copy
    (supervisor.tmp / "conf.d" / "devloop.conf").write_text(test_copy)
    supervisor.start(_env(project))

    pid = wait_for(lambda: supervisor.running_pid("devloop"), what="RUNNING")  # startsecs=5
    assert wait_for(lambda: _heartbeat_pid(project), what="HEALTHY") == pid

    os.kill(pid, signal.SIGKILL)
    pid2 = wait_for(lambda: supervisor.running_pid("devloop", not_pid=pid), what="restart")
    wait_for(lambda: _heartbeat_pid(project) == pid2, what="HEALTHY again")

    logs = supervisor.tmp / "logs"

    def logged() -> list[tuple[str, int]]:
        return sorted((p.name, p.stat().st_size) for p in logs.glob("devloop-stdout*"))

    for i in range(80):  # each run of the chatty check logs a line
        if list(logs.glob("devloop-stdout*.log.1")):
            break
        before = logged()
        (project / f"f{i}.txt").write_text("x")
        wait_for(lambda before=before: logged() != before, what=f"run {i} logged")
    rotated = wait_for(lambda: list(logs.glob("devloop-stdout*.log.1")), what="rotation")
    assert rotated[0].stat().st_size <= 1024 + 200

    (project / "go.slow").write_text("x")
    check = wait_for(lambda: processes_in(project, marker), what="the slow check")
    out = supervisor.ctl("stop", "devloop")
    assert "stopped" in out, out
    assert not alive(pid2)
    assert not any(alive(c) for c in check), "a check outlived the daemon"
    sup_log = (supervisor.tmp / "supervisord.log").read_text()
    assert re.search(r"stopped: devloop \(exit status 0\)", sup_log), sup_log
    assert "SIGKILL" not in sup_log.split("waiting for devloop")[-1]
    assert "killing 'devloop'" not in sup_log
    status = devloop("daemon-status", str(project))
    assert status.returncode == 1 and "not running" in status.stdout


@pytest.mark.parametrize("dirname", ["proj", "we ird %(ENV_HOME)s 'q\" \\b#c"])
def test_service_install_supervisor_section_runs(tmp_path: Path, supervisor: Supervisor,
                                                 dirname: str) -> None:
    """Also with a directory that needs shell quoting and %-escaping for supervisord."""
    project = make_project(tmp_path / dirname, """heartbeat_interval = 1
[checks.ok]
command = ["true"]
patterns = ["*.txt"]
""")
    root = tmp_path / "root"
    me = pwd.getpwuid(os.geteuid()).pw_name
    r = devloop("service", "install", "alpha", "--supervisor", "--dir", str(project),
                "--user", me, "--root", str(root), *(["--allow-root"] if me == "root" else []))
    assert r.returncode == 0, r.stderr
    conf = root / "etc" / "supervisor" / "conf.d" / "devloop-alpha.conf"
    assert f"created    {conf}" in r.stdout and "supervisorctl update devloop-alpha" in r.stdout
    text = conf.read_text()
    assert text.startswith("; installed by devloop ")
    assert f"command={devloop_exe()} watch --foreground " in text
    shutil.copy(conf, supervisor.tmp / "conf.d" / conf.name)
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_DIR"}
    supervisor.start(env)  # neither PROJECT_DIR nor devloop on PATH needed
    pid = wait_for(lambda: supervisor.running_pid("devloop-alpha"), what="RUNNING")
    assert wait_for(lambda: _heartbeat_pid(project), what="HEALTHY") == pid

    gone = devloop("service", "uninstall", "alpha", "--supervisor", "--root", str(root))
    assert gone.returncode == 0 and f"removed    {conf}" in gone.stdout
    assert not conf.exists()
