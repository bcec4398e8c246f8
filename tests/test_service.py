"""`devloop service install/uninstall`: real files, then loaded by a real nested systemd."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_helpers import REPO, devloop, devloop_exe, make_project

sys.path.insert(0, str(REPO / "tests" / "systemd"))
import systemd_harness as h  # the systemd helper's harness, tests/systemd/

UID = 47113
# the tests own their projects; as root, the daemon would run as root: say it is meant
AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []


def test_install_writes_template_and_dropin(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", "[checks.a]\ncommand = [\"true\"]\n"
                           "patterns = [\"*\"]\n")
    root = tmp_path / "root"
    r = devloop("service", "install", "proj", "--dir", str(project), "--root", str(root),
                *AS_ROOT)
    assert r.returncode == 0, r.stderr
    unit_dir = root / "etc" / "systemd" / "system"
    template = unit_dir / "devloop@.service"
    dropin = unit_dir / "devloop@proj.service.d" / "instance.conf"
    shipped = (REPO / "units" / "devloop@.service").read_text()
    assert template.read_text().split("\n", 1)[1] == shipped
    assert template.read_text().startswith("# installed by devloop ")
    slice_ = unit_dir / "devloop.slice"  # the template runs its instances there
    assert "\nSlice=devloop.slice\n" in shipped
    assert slice_.read_text().split("\n", 1)[1] == (REPO / "units" / "devloop.slice").read_text()
    assert slice_.read_text().startswith("# installed by devloop ")
    text = dropin.read_text()
    assert f'Environment="DEVLOOP_PROJECT_DIR={project}"\n' in text
    assert f'ReadWritePaths="-{project}/.devloop"\n' in text
    assert f'ExecStart=\nExecStart="{devloop_exe()}" watch --foreground ' in text
    assert "systemctl enable --now devloop@proj.service" in r.stdout
    again = devloop("service", "install", "proj", "--dir", str(project), "--root", str(root),
                    *AS_ROOT)
    assert again.stdout.count("unchanged") == 3

    # uninstall: refuses while enabled, then removes exactly what it wrote
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir()
    (wants / "devloop@proj.service").symlink_to(template)
    busy = devloop("service", "uninstall", "proj", "--root", str(root))
    assert busy.returncode == 75 and "systemctl disable --now" in busy.stderr
    (wants / "devloop@proj.service").unlink()
    gone = devloop("service", "uninstall", "proj", "--root", str(root))
    assert gone.returncode == 0, gone.stderr
    assert not template.exists() and not dropin.parent.exists() and not slice_.exists()
    assert f"removed    {slice_}" in gone.stdout
    assert sorted(p.name for p in unit_dir.iterdir()) == ["multi-user.target.wants"]


def test_a_user_unit_gets_no_slice_file(tmp_path: Path) -> None:
    """A user manager's units run in its own background.slice, which systemd ships."""
    project = make_project(tmp_path / "proj", "")
    r = devloop("service", "install", "proj", "--dir", str(project), "--root",
                str(tmp_path / "root"), "--user-unit", "--print", *AS_ROOT)
    assert r.returncode == 0, r.stderr
    assert "devloop.slice" not in r.stdout and "\nSlice=background.slice\n" in r.stdout


def test_a_foreign_slice_is_left_alone_and_does_not_block(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", "")
    unit_dir = tmp_path / "root" / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    own = "[Slice]\nCPUWeight=5\n"
    (unit_dir / "devloop.slice").write_text(own)
    args = ["--root", str(tmp_path / "root")]
    r = devloop("service", "install", "proj", "--dir", str(project), *args, *AS_ROOT)
    assert r.returncode == 0 and f"left alone {unit_dir / 'devloop.slice'}" in r.stdout, r
    assert (unit_dir / "devloop@proj.service.d" / "instance.conf").exists()
    r = devloop("service", "uninstall", "proj", *args)
    assert r.returncode == 0 and not (unit_dir / "devloop@.service").exists(), r.stdout
    assert (unit_dir / "devloop.slice").read_text() == own


def test_print_writes_nothing_and_foreign_files_stay(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", "")
    root = tmp_path / "root"
    r = devloop("service", "install", "proj", "--dir", str(project), "--root", str(root),
                "--print", "--user-unit", *AS_ROOT)
    assert r.returncode == 0, r.stderr
    assert "would be created" in r.stdout and "[Service]" in r.stdout
    assert not root.exists()
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "devloop@.service").write_text("[Service]\nExecStart=/bin/true\n")
    r = devloop("service", "install", "proj", "--dir", str(project), "--root", str(root),
                *AS_ROOT)
    assert r.returncode == 0 and "left alone" in r.stdout
    assert (unit_dir / "devloop@.service").read_text() == "[Service]\nExecStart=/bin/true\n"
    r = devloop("service", "uninstall", "proj", "--root", str(root))
    assert "left alone" in r.stdout and (unit_dir / "devloop@.service").exists()


@pytest.mark.parametrize("args, code", [
    (["install", "bad/name"], 64),
    (["install", "p", "--dir", "/nonexistent/dir"], 66),
    (["install", "p", "--user", "no-such-user-here"], 67),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], code: int) -> None:
    r = devloop("service", *args, "--root", str(tmp_path), cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# -- the real thing: files written by `service install` inside a nested systemd -----------

@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.NestedSystemd]:
    ok, why = h.can_boot()
    if not ok:
        pytest.skip(why)
    wheel = h.build_wheel(REPO, tmp_path_factory.mktemp("svc-wheel"))
    sd = h.NestedSystemd(home_tmpfs=True, private_tmp=True,
                         binds=[(str(wheel.parent), h.WHEEL_DIR_NS)])
    sd.start()
    try:
        sd.run(["/usr/bin/python3", "-m", "venv", h.VENV])
        sd.run([f"{h.VENV}/bin/pip", "install", "-q", "--disable-pip-version-check",
                f"{h.WHEEL_DIR_NS}/{wheel.name}"], timeout=900)
        # a fixed high uid: a host user of the same uid would share limits and signals
        sd.run(["useradd", "-u", str(UID), "--create-home", "--user-group", "--shell",
                "/bin/sh", h.USER])
        yield sd
    finally:
        sd.stop()


@pytest.mark.systemd
def test_installed_files_run_under_real_systemd(nested: h.NestedSystemd) -> None:
    sd = nested
    project = f"{h.HOME}/dev/svc"
    sd.write_file(f"{project}/devloop.toml", "heartbeat_interval = 2\n[checks.ok]\n"
                  'command = ["true"]\npatterns = ["*.txt"]\n', owner=h.USER)
    exe = f"{h.VENV}/bin/devloop"
    r = sd.run([exe, "service", "install", "svc", "--dir", project, "--now"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$ systemctl enable --now devloop@svc.service" in r.stdout
    dropin = sd.run(["cat", f"{h.UNIT_DIR_NS}/devloop@svc.service.d/instance.conf"]).stdout
    assert f"User={h.USER}\n" in dropin  # the owner of --dir
    assert f'ExecStart="{exe}" watch --foreground' in dropin
    shown = sd.show("devloop@svc.service", "ActiveState", "User", "MainPID", "DropInPaths",
                    "Slice")
    assert shown["ActiveState"] == "active" and shown["User"] == h.USER
    assert shown["Slice"] == "devloop.slice"
    weights = sd.show("devloop.slice", "CPUWeight", "IOWeight", "FragmentPath")
    assert weights == {"CPUWeight": "20", "IOWeight": "20",
                       "FragmentPath": f"{h.UNIT_DIR_NS}/devloop.slice"}, weights
    h.wait_for(lambda: sd.as_user(h.USER, [exe, "daemon-status", project], check=False)
               .returncode == 0, what="HEALTHY")
    health = json.loads(sd.as_user(h.USER, [exe, "daemon-status", project, "--json"]).stdout)
    assert health["pid"] == int(shown["MainPID"])

    r = sd.run([exe, "service", "uninstall", "svc", "--now"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sd.show("devloop@svc.service", "ActiveState")["ActiveState"] == "inactive"
    left = sd.run(["sh", "-c", f"ls -A {h.UNIT_DIR_NS}; ls -A {h.UNIT_DIR_NS}/*.wants 2>&1"],
                  check=False).stdout
    assert "devloop" not in left, left
    assert not pathlib.Path("/etc/systemd/system/devloop@svc.service.d").exists()  # host: no


EXE = f"{h.VENV}/bin/devloop"


@pytest.mark.systemd
def test_paths_with_space_percent_quote_backslash_run_under_real_systemd(
        nested: h.NestedSystemd) -> None:
    """Every value that needs quoting or escaping, loaded and run by systemd itself."""
    sd = nested
    project = f"{h.HOME}/dev/we ird %n 'q\" \\b"
    metrics_dir = f"{h.HOME}/m %i"
    sd.as_user(h.USER, ["mkdir", "-p", project, metrics_dir])
    sd.write_file(f"{project}/devloop.toml", "heartbeat_interval = 1\n"
                  f'metrics_textfile = "{metrics_dir}/x.prom"\n'
                  '[checks.ok]\ncommand = ["true"]\npatterns = ["*.txt"]\n', owner=h.USER)
    bindir = "/opt/dev loop %h"  # ExecStart='s path (systemd refuses quotes, backslashes)
    exe = f"{bindir}/devloop"
    sd.run(["mkdir", "-p", bindir])
    sd.run(["ln", "-s", EXE, exe])
    r = sd.run([EXE, "service", "install", "weird", "--dir", project, "--executable", exe,
                "--now"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        shown = sd.show("devloop@weird.service", "ActiveState", "Description", "User")
        assert shown == {"ActiveState": "active", "User": h.USER,
                         "Description": f"DevLoop checks for {project}"}, shown
        h.wait_for(lambda: sd.as_user(h.USER, [EXE, "daemon-status", project], check=False)
                   .returncode == 0, what="HEALTHY")  # .devloop writable: ReadWritePaths= ok
        h.wait_for(lambda: sd.run(["test", "-s", f"{metrics_dir}/x.prom"], check=False)
                   .returncode == 0, what="the metrics textfile")
        argv = sd.run(["cat", f"/proc/{sd.show('devloop@weird.service', 'MainPID')['MainPID']}"
                       "/cmdline"]).stdout.split("\0")
        assert argv[-3:-1] == ["--foreground", project], argv
    finally:
        r = sd.run([EXE, "service", "uninstall", "weird", "--now"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _alice_owns_nothing_in_etc(sd: h.NestedSystemd) -> None:
    found = sd.run(["find", "/etc", "-xdev", "-user", h.USER]).stdout
    assert found == "", found


@pytest.mark.systemd
@pytest.mark.parametrize("link, target", [
    (".config", "/etc"),
    (".config/systemd", "/etc/systemd"),
    (".config/systemd/user", "/etc/systemd/system"),
    (".config/systemd/user/devloop@lnk.service.d", "/etc/systemd/system"),
    (".config/systemd/user/devloop@.service", "/etc/victim.conf"),
    (".config/systemd/user/devloop@lnk.service.d/instance.conf", "/etc/victim.conf"),
])
def test_root_never_writes_a_user_unit_through_the_users_symlinks(
        nested: h.NestedSystemd, link: str, target: str) -> None:
    """alice plants a symlink at one level of ~/.config/systemd/user/...; root installs
    and uninstalls her user unit. Before: root wrote (and chowned to alice) files in
    /etc/systemd/system, or removed a file there."""
    sd = nested
    victim = "# installed by devloop 0.0.1: a root file with devloop's mark\n"
    sd.write_file("/etc/victim.conf", victim)
    sd.write_file("/etc/systemd/system/instance.conf", victim)
    project = f"{h.HOME}/dev/lnk"
    sd.as_user(h.USER, ["rm", "-rf", f"{h.HOME}/.config"])
    sd.as_user(h.USER, ["mkdir", "-p", project, f"{h.HOME}/{link}".rsplit("/", 1)[0]])
    sd.as_user(h.USER, ["ln", "-s", target, f"{h.HOME}/{link}"])
    before = sd.run(["ls", "-lR", "/etc/systemd"]).stdout
    r = sd.run([EXE, "service", "install", "lnk", "--user-unit", "--user", h.USER, "--dir",
                project], check=False)
    for action in ("install", "uninstall"):
        assert "Traceback" not in r.stderr and r.returncode in (0, 73), r.stdout + r.stderr
        assert sd.run(["ls", "-lR", "/etc/systemd"]).stdout == before, action
        assert sd.run(["cat", "/etc/victim.conf"]).stdout == victim
        assert sd.run(["cat", "/etc/systemd/system/instance.conf"]).stdout == victim
        _alice_owns_nothing_in_etc(sd)
        r = sd.run([EXE, "service", "uninstall", "lnk", "--user-unit", "--user", h.USER],
                   check=False)
    sd.run(["rm", "/etc/victim.conf", "/etc/systemd/system/instance.conf"])


@pytest.mark.systemd
def test_a_symlink_raced_in_during_install_leads_nowhere(nested: h.NestedSystemd) -> None:
    """alice swaps ~/.config/systemd/user between a directory and a symlink to
    /etc/systemd/system as fast as she can while root installs and uninstalls."""
    sd = nested
    project = f"{h.HOME}/dev/race"
    sd.as_user(h.USER, ["rm", "-rf", f"{h.HOME}/.config"])
    sd.as_user(h.USER, ["mkdir", "-p", project, f"{h.HOME}/.config/systemd"])
    before = sd.run(["ls", "-lR", "/etc/systemd"]).stdout
    loop = ("cd ~/.config/systemd && while :; do rm -rf user; mkdir -p user; rm -rf user; "
            "ln -s /etc/systemd/system user; done")
    sd.sh(f"setpriv --reuid={h.USER} --regid={h.USER} --init-groups env HOME={h.HOME} "
          f"timeout 30 sh -c '{loop}' </dev/null >/dev/null 2>&1 &")
    for _ in range(15):
        for action in (["install", "race", "--dir", project], ["uninstall", "race"]):
            r = sd.run([EXE, "service", *action, "--user-unit", "--user", h.USER],
                       check=False)
            assert "Traceback" not in r.stderr and r.returncode in (0, 73), r.stderr
    assert sd.run(["ls", "-lR", "/etc/systemd"]).stdout == before
    _alice_owns_nothing_in_etc(sd)


@pytest.mark.systemd
def test_root_writes_a_user_unit_as_the_user(nested: h.NestedSystemd) -> None:
    sd = nested
    project = f"{h.HOME}/dev/mine"
    sd.as_user(h.USER, ["rm", "-rf", f"{h.HOME}/.config"])
    sd.as_user(h.USER, ["mkdir", "-p", project])
    r = sd.run([EXE, "service", "install", "mine", "--user-unit", "--user", h.USER, "--dir",
                project], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    owners = sd.run(["find", f"{h.HOME}/.config", "-printf", "%u %p\\n"]).stdout.splitlines()
    assert len(owners) >= 5 and all(o.startswith(f"{h.USER} ") for o in owners), owners
    r = sd.run([EXE, "service", "uninstall", "mine", "--user-unit", "--user", h.USER],
               check=False)
    assert r.returncode == 0 and "removed" in r.stdout, r.stdout + r.stderr
    assert "devloop" not in sd.run(["find", f"{h.HOME}/.config"]).stdout


@pytest.mark.systemd
def test_root_writes_the_hook_as_the_repository_owner_and_never_via_hooks_path(
        nested: h.NestedSystemd) -> None:
    sd = nested
    repo = f"{h.HOME}/dev/repo"
    sd.as_user(h.USER, ["mkdir", "-p", repo])
    sd.as_user(h.USER, ["git", "init", "-q", repo])
    sd.run(["git", "config", "--system", "safe.directory", "*"])  # root's git trusts it
    r = sd.run([EXE, "update-hooks", repo], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    hook = f"{repo}/.git/hooks/pre-commit"
    assert sd.run(["stat", "-c", "%U", hook]).stdout.strip() == h.USER
    sd.run(["mkdir", "-p", "/etc/hk"])
    sd.as_user(h.USER, ["git", "-C", repo, "config", "core.hooksPath", "/etc/hk"])
    r = sd.run([EXE, "update-hooks", repo], check=False)
    assert r.returncode == 0 and "core.hooksPath" in r.stdout, r.stdout + r.stderr
    assert sd.run(["ls", "-A", "/etc/hk"]).stdout == ""
    sd.run(["git", "config", "--system", "--unset", "safe.directory"])


def _user_manager(sd: h.NestedSystemd) -> list[str]:
    """alice's real user manager (logind + linger), and the systemctl that drives it."""
    for unit in ("user@.service", "user-runtime-dir@.service", "systemd-logind.service"):
        sd.run(["ln", "-sf", f"/lib/systemd/system/{unit}", f"{h.UNIT_DIR_NS}/{unit}"])
    sd.run(["ln", "-sf", "/lib/systemd/system/systemd-logind.service",
            f"{h.UNIT_DIR_NS}/dbus-org.freedesktop.login1.service"])
    sd.systemctl("daemon-reload")
    sd.run(["loginctl", "enable-linger", h.USER])
    ctl = ["systemctl", "--user", "-M", f"{h.USER}@", "--no-pager"]
    h.wait_for(lambda: sd.run([*ctl, "is-system-running"], check=False).stdout.strip()
               in ("running", "degraded"), what="alice's user manager")
    return ctl


@pytest.mark.systemd
def test_user_units_hand_copied_and_installed_keep_working(nested: h.NestedSystemd) -> None:
    """The README's hand-copy flow starts; uninstalling one instance keeps the others."""
    sd = nested
    ctl = _user_manager(sd)
    toml = '[checks.ok]\ncommand = ["true"]\npatterns = ["*.txt"]\n'
    for name in ("hand", "probe", "proj"):
        sd.write_file(f"{h.HOME}/dev/{name}/devloop.toml", toml, owner=h.USER)
    # docs/systemd.md: a venv at ~/.devloop (here a link to the one the fixture built:
    # the same files), the template copied as it is, no drop-in
    sd.as_user(h.USER, ["ln", "-sfn", h.VENV, f"{h.HOME}/.devloop"])
    sd.as_user(h.USER, ["install", "-Dm0644", f"{h.VENV}/share/devloop/units/user/"
                        "devloop@.service", f"{h.HOME}/.config/systemd/user/devloop@.service"])
    sd.run([*ctl, "daemon-reload"])
    sd.run([*ctl, "start", "devloop@hand.service"])
    h.wait_for(lambda: sd.as_user(h.USER, [EXE, "daemon-status", f"{h.HOME}/dev/hand"],
                                  check=False).returncode == 0, what="hand-copied HEALTHY")
    sd.run([*ctl, "stop", "devloop@hand.service"])
    sd.as_user(h.USER, ["rm", f"{h.HOME}/.config/systemd/user/devloop@.service"])

    for name in ("probe", "proj"):
        r = sd.run([EXE, "service", "install", name, "--user-unit", "--user", h.USER, "--dir",
                    f"{h.HOME}/dev/{name}", "--now"], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    dropin = f"{h.HOME}/.config/systemd/user/devloop@proj.service.d/instance.conf"
    sd.as_user(h.USER, ["sed", "-i", "1d", dropin])  # her own now: the mark line removed
    r = sd.run([EXE, "service", "uninstall", "probe", "--user-unit", "--user", h.USER, "--now"],
               check=False)
    assert r.returncode == 0 and "kept" in r.stdout, r.stdout + r.stderr
    sd.run([*ctl, "restart", "devloop@proj.service"])
    assert sd.run([*ctl, "is-active", "devloop@proj.service"]).stdout.strip() == "active"
    desc = sd.run([*ctl, "show", "-p", "Description", "devloop@proj.service"]).stdout
    assert desc.strip() == f"Description=DevLoop checks for {h.HOME}/dev/proj"
    # an instance started by hand, with no drop-in and not enabled, also keeps it
    sd.run([*ctl, "start", "devloop@hand.service"])
    sd.as_user(h.USER, ["rm", "-r", f"{h.HOME}/.config/systemd/user/devloop@proj.service.d"])
    r = sd.run([EXE, "service", "uninstall", "proj", "--user-unit", "--user", h.USER, "--now"],
               check=False)
    assert r.returncode == 0 and "devloop@hand.service (loaded)" in r.stdout, r.stdout
    sd.run([*ctl, "restart", "devloop@hand.service"])
    sd.run([*ctl, "stop", "devloop@hand.service"])
    r = sd.run([EXE, "service", "uninstall", "proj", "--user-unit", "--user", h.USER],
               check=False)
    assert r.returncode == 0 and "removed" in r.stdout, r.stdout + r.stderr


@pytest.mark.systemd
def test_an_injection_alice_plants_after_install_never_reaches_systemd(
        nested: h.NestedSystemd) -> None:
    """issue 9: root's update-hooks rereads devloop.toml; alice's newline stays hers."""
    sd = nested
    project = f"{h.HOME}/dev/inj"
    toml = '[checks.ok]\ncommand = ["true"]\npatterns = ["*.txt"]\n'
    sd.write_file(f"{project}/devloop.toml", toml, owner=h.USER)
    r = sd.run([EXE, "service", "install", "inj", "--dir", project], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    dropin = f"{h.UNIT_DIR_NS}/devloop@inj.service.d/instance.conf"
    before = sd.run(["cat", dropin]).stdout
    sd.write_file(f"{project}/devloop.toml", 'metrics_textfile = "/var/lib/m\\nUser=root\\n'
                  'ExecStartPre=+/bin/sh -c id>/tmp/pwn\\n/a.prom"\n' + toml, owner=h.USER)
    r = sd.run([EXE, "update-hooks", project], check=False)
    assert r.returncode == 65 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert sd.run(["cat", dropin]).stdout == before
    sd.systemctl("daemon-reload")
    shown = sd.show("devloop@inj.service", "User", "ExecStartPre")
    assert shown["User"] == h.USER and "pwn" not in shown["ExecStartPre"], shown
    sd.run([EXE, "service", "uninstall", "inj"])
