"""Smoke tests of the harness and of the system template's sandbox (no daemon logic)."""

from __future__ import annotations

import json

import pytest
from systemd_harness import HOME, UNIT_DIR_NS, USER, VENV, DevloopSystem, wait_for

pytestmark = pytest.mark.systemd

STUB = f"""#!{VENV}/bin/python
import json, os, socket, sys, time
def notify(msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a = os.environ["NOTIFY_SOCKET"]
    s.connect("\\0" + a[1:] if a.startswith("@") else a)
    s.send(msg.encode())
d = sys.argv[-1]
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
probes = {{p: writable(p) for p in sys.argv[1:-1]}}
with open(os.path.join(d, ".devloop", "probe"), "w") as f:
    f.write(json.dumps(probes))
notify("READY=1\\nSTATUS=stub watching " + d)
while True:
    time.sleep(1)
    notify("WATCHDOG=1")
"""


def test_nested_systemd_boots_with_journald(devloop_system: DevloopSystem) -> None:
    sd = devloop_system.sd
    state = sd.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert sd.show("systemd-journald.service", "ActiveState")["ActiveState"] == "active"
    sd.run(["systemd-cat", "-t", "harness-smoke", "echo", "hello journal"])
    wait_for(lambda: "hello journal" in sd.journal("-t", "harness-smoke"), timeout=10)


def test_venv_has_devloop_and_systemd_python(devloop_system: DevloopSystem) -> None:
    sd = devloop_system.sd
    r = sd.as_user(USER, [f"{VENV}/bin/python", "-c",
                          "import devloop, systemd.journal, systemd.daemon; print('ok')"])
    assert r.stdout.strip() == "ok"
    assert sd.run(["test", "-x", f"{VENV}/bin/devloop"], check=False).returncode == 0


def test_template_verifies_unmodified_inside_namespace(devloop_system: DevloopSystem) -> None:
    """The real template, untouched, where /opt/devloop/bin/devloop exists."""
    sd = devloop_system.sd
    sd.run(["mkdir", "-p", "/run/verify"])
    sd.run(["cp", f"{UNIT_DIR_NS}/devloop@.service", "/run/verify/devloop@x.service"])
    r = sd.run(["systemd-analyze", "verify", "--man=no", "/run/verify/devloop@x.service"],
               check=False)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    r = sd.run(["systemd-analyze", "verify", "--man=no", f"{UNIT_DIR_NS}/devloop.slice"],
               check=False)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r


def test_template_sandbox(devloop_system: DevloopSystem) -> None:
    """The template with only ExecStart= replaced by a stub: it runs as alice, creates
    <project>/.devloop owned by alice, and the sandbox is what docs/systemd.md says."""
    sys_ = devloop_system
    sd = sys_.sd
    sd.write_file("/opt/devloop-stub/stub.py", STUB, mode="0755")
    name = "sandbox"
    d = sys_.project_dir(name)
    paths = [f"{d}/.devloop/w", f"{d}/not-allowed", f"{HOME}/not-allowed", "/tmp/ok",
             f"/var/cache/devloop/{name}/ok", "/opt/not-allowed"]
    sys_.make_project(name, None, dropins={"stub.conf": (
        "[Service]\nExecStart=\n"
        f"ExecStart=/opt/devloop-stub/stub.py {' '.join(paths)} ${{DEVLOOP_PROJECT_DIR}}\n")})
    try:
        sd.systemctl("start", sys_.unit(name))
        st = sys_.state(name)
        assert st["ActiveState"] == "active", st
        assert st["StatusText"] == f"stub watching {d}"
        pid = st["MainPID"]
        owner = sd.run(["stat", "-c", "%U:%G %a", f"{d}/.devloop"]).stdout.split()
        assert owner[0] == f"{USER}:{USER}"
        probes = json.loads(sd.run(["cat", f"{d}/.devloop/probe"]).stdout)
        status = sd.run(["grep", "-E", "^(Uid|NoNewPrivs|CapBnd|Seccomp):",
                         f"/proc/{pid}/status"]).stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines())
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Seccomp"].strip() == "2"
        assert int(fields["CapBnd"].strip(), 16) == 0
        uid = sd.run(["id", "-u", USER]).stdout.strip()
        assert fields["Uid"].split()[0] == uid
        # what the daemon and its checks may write
        assert probes == {f"{d}/.devloop/w": True, f"{d}/not-allowed": False,
                          f"{HOME}/not-allowed": False, "/tmp/ok": True,
                          f"/var/cache/devloop/{name}/ok": True, "/opt/not-allowed": False}
    finally:
        sys_.remove_project(name)
