"""The project or its `.devloop` deleted under the real nested systemd and the real unit
(issue 10 item 2): exit 66 is not restarted; a lost `.devloop` comes back by one restart."""

from __future__ import annotations

import time

import pytest
from systemd_harness import USER, DevloopSystem, wait_for

pytestmark = pytest.mark.systemd

TOML = """\
heartbeat_interval = 1

[checks.echo]
command = ["sh", "-c", "echo checked"]
patterns = ["*.txt"]
debounce_ms = 0
run_on_start = false
"""


def test_rm_rf_of_the_project_exits_66_and_is_not_restarted(
        devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "rmproj"
    d = sys_.make_project(name, TOML, files={"src/deep/a.txt": "x\n"})
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        sys_.wait_active(name)
        sys_.sd.as_user(USER, ["rm", "-rf", d])
        wait_for(lambda: sys_.state(name)["ActiveState"] == "failed", timeout=60,
                 what="the daemon exits")
        time.sleep(7)  # longer than RestartSec=5s: a restart would have happened by now
        st = sys_.state(name)
        assert st["ActiveState"] == "failed" and st["ExecMainStatus"] == "66", st
        assert st["NRestarts"] == "0", st
        lines = [ln for ln in sys_.sd.journal("-u", sys_.unit(name)).splitlines()
                 if "was deleted" in ln]
        assert len(lines) == 1 and d in lines[0], lines
    finally:
        sys_.remove_project(name)


@pytest.mark.parametrize("how", ["rm -rf .devloop", "git clean -xdf"])
def test_rm_rf_of_state_dir_restarts_once_and_watches_again(
        devloop_system: DevloopSystem, how: str) -> None:
    sys_ = devloop_system
    name = "rmstate" if how.startswith("rm") else "gitclean"
    d = sys_.make_project(name, TOML)
    git = ["git", "-C", d, "-c", "user.name=a", "-c", "user.email=a@example.invalid"]
    try:
        if how == "git clean -xdf":  # devloop.toml is tracked and stays; .devloop goes
            sys_.sd.as_user(USER, ["git", "init", "-q", d])
            sys_.sd.as_user(USER, [*git, "add", "devloop.toml"])
            sys_.sd.as_user(USER, [*git, "commit", "-qm", "init"])
        sys_.sd.systemctl("start", sys_.unit(name))
        first = sys_.wait_active(name)["MainPID"]
        if how == "git clean -xdf":
            sys_.sd.as_user(USER, [*git, "clean", "-qxdf"])
        else:
            sys_.sd.as_user(USER, ["rm", "-rf", f"{d}/.devloop"])
        st = sys_.wait_active(name, not_pid=first, timeout=90)
        assert st["NRestarts"] == "1", st
        journal = sys_.sd.journal("-u", sys_.unit(name))
        assert "was deleted or replaced: recreating it" in journal, journal
        wait_for(lambda: sys_.heartbeat(name), timeout=30, what="a heartbeat in the new .devloop")
        owner = sys_.sd.run(["stat", "-c", "%U %a", f"{d}/.devloop"]).stdout.split()
        assert owner == [USER, "700"], owner
        time.sleep(7)
        assert sys_.state(name)["NRestarts"] == "1"  # no restart loop
        sys_.sd.as_user(USER, ["sh", "-c", f"echo y > {d}/b.txt"])
        r = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
            sys_.devloop("status", d)), timeout=30, what="a run stored after the restart")
        assert "echo: pass" in r.stdout, r.stdout
    finally:
        sys_.remove_project(name)


def test_stop_of_a_unit_daemon_is_refused_or_done_cleanly(devloop_system: DevloopSystem) -> None:
    """As alice, the service's process (in the unit's user namespace) cannot be inspected:
    `devloop stop` says so and signals nothing; as root it is verified and stopped."""
    sys_ = devloop_system
    name = "stopunit"
    d = sys_.make_project(name, TOML)
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        pid = sys_.wait_active(name)["MainPID"]
        r = sys_.devloop("stop", d)
        assert r.returncode == 75, r
        assert "cannot be checked from here" in r.stderr and "systemctl" in r.stderr, r.stderr
        assert sys_.state(name)["MainPID"] == pid
        r = sys_.sd.run(["/opt/devloop/bin/devloop", "stop", d], check=False)
        assert r.returncode == 0 and f"PID {pid}" in r.stdout and "systemd" in r.stdout, r
    finally:
        sys_.remove_project(name)


def test_a_newline_in_a_name_stays_in_one_journal_message(devloop_system: DevloopSystem) -> None:
    """alice's daemon cannot list a directory another user made in her project."""
    sys_ = devloop_system
    name = "nlname"
    d = sys_.make_project(name, TOML)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIattacker other@host"
    sys_.sd.run(["mkdir", "-m", "0", f"{d}/evil\n{key}"])
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        sys_.wait_active(name)
        messages = [str(r.get("MESSAGE", "")) for r in sys_.sd.journal_json(
            "-u", sys_.unit(name))]
        evil = [m for m in messages if "evil" in m]
        assert evil and all("\n" not in m for m in evil), evil
        assert f"evil\\n{key}" in evil[0], evil
        text = sys_.sd.journal("-u", sys_.unit(name))
        assert not any(line.startswith("ssh-ed25519") for line in text.splitlines()), text
    finally:
        sys_.remove_project(name)
