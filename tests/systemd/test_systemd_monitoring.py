"""The published health file under the hardened system template (PrivateUsers=yes,
ProtectSystem=strict): a monitoring user of another group reads it, never .devloop/."""

from __future__ import annotations

import pytest
from systemd_harness import USER, VENV, DevloopSystem, wait_for

MONITOR = "devloop-mon"
HEALTH_DIR = "/var/lib/devloop-health/mon"
TOML = f"""heartbeat_interval = 1
health_file = "{HEALTH_DIR}/health.json"
[checks.ok]
command = ["true"]
patterns = ["*.txt"]
"""


@pytest.mark.systemd
def test_monitoring_user_reads_the_published_copy_only(devloop_system: DevloopSystem) -> None:
    sys_, sd = devloop_system, devloop_system.sd
    if sd.run(["getent", "passwd", MONITOR], check=False).returncode != 0:
        sd.run(["useradd", "--no-create-home", "--user-group", "--shell", "/bin/sh", MONITOR])
    # docs/production.md, Nagios step 1: setgid directory of the monitoring group
    sd.run(["install", "-d", "-o", USER, "-g", MONITOR, "-m", "2750", HEALTH_DIR])
    name = "mon"
    project = sys_.make_project(name, TOML, dropins={  # what `service install` adds
        "test.conf": f"[Service]\nReadWritePaths={HEALTH_DIR}\nRestart=no\n"})
    exe = f"{VENV}/bin/devloop"

    def nagios(*extra: str) -> tuple[int, str]:
        r = sd.as_user(MONITOR, [exe, "daemon-status", project, "--nagios", *extra],
                       check=False)
        return r.returncode, r.stdout.strip()

    try:
        sd.systemctl("start", sys_.unit(name))
        health = f"{HEALTH_DIR}/health.json"
        wait_for(lambda: sd.run(["test", "-s", health], check=False).returncode == 0,
                 timeout=30, what="the published heartbeat")
        st = sd.run(["stat", "-c", "%a %U %G", health]).stdout.split()
        assert st == ["640", USER, MONITOR], st
        code, line = nagios("--health-file", health)
        assert code == 0 and line.startswith("DEVLOOP OK"), line
        code, line = nagios()  # the private heartbeat: not for the monitoring user
        assert code == 3 and "Permission denied" in line, line
        pid = sys_.state(name)["MainPID"]
        sd.run(["kill", "-KILL", pid])
        wait_for(lambda: sys_.state(name)["ActiveState"] in ("failed", "inactive"),
                 timeout=30, what="the unit down")
        code, line = nagios("--health-file", health)
        assert code == 2 and f"daemon PID {pid} is not running" in line, line
    finally:
        sys_.remove_project(name)
        sd.run(["rm", "-rf", HEALTH_DIR])
