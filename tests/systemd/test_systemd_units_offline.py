"""Offline checks of the unit files: ``systemd-analyze verify`` and ``security``.

No running systemd and no root needed. ``verify`` exits 0 on unknown keys and bad
values (it only warns), so ANY output counts as a failure. ``verify`` also insists
that ExecStart='s executable exists: the system template's /opt/devloop/bin/devloop is
replaced by a stub in the copy (the only change; test_systemd_smoke.py verifies the
unmodified file inside the nested systemd, where /opt/devloop exists), and the user
template gets a HOME with a stub ~/.devloop/bin/devloop.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest
from systemd_harness import repo_root

ROOT = repo_root(pathlib.Path(__file__))
SYSTEM_UNIT = ROOT / "units" / "devloop@.service"
USER_UNIT = ROOT / "units" / "user" / "devloop@.service"
SLICE_UNIT = ROOT / "units" / "devloop.slice"
SYSTEM_EXEC = "/opt/devloop/bin/devloop"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed")


def _stub(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _system_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    text = SYSTEM_UNIT.read_text()
    line = f"\nExecStart={SYSTEM_EXEC} "
    assert text.count(line) == 1, "ExecStart= is expected to name /opt/devloop"
    stub = _stub(tmp_path / "bin" / "devloop")
    unit = tmp_path / "devloop@x.service"
    unit.write_text(text.replace(line, f"\nExecStart={stub} "))
    return unit


def _analyze(*args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_system_template_verifies_clean(tmp_path: pathlib.Path) -> None:
    r = _analyze("verify", "--man=no", str(_system_copy(tmp_path)))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def test_system_template_and_its_slice_verify_clean(tmp_path: pathlib.Path) -> None:
    """The template names devloop.slice; the slice, verified beside it, is the one loaded."""
    unit = _system_copy(tmp_path)
    shutil.copy(SLICE_UNIT, tmp_path / "devloop.slice")
    r = _analyze("verify", "--man=no", str(tmp_path / "devloop.slice"), str(unit))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert "\nSlice=devloop.slice\n" in SYSTEM_UNIT.read_text()
    text = SLICE_UNIT.read_text()
    assert "[Slice]\nCPUWeight=20\nIOWeight=20\n" in text  # low beside user.slice's 100


def test_slice_verify_would_catch_a_typo(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "devloop.slice"
    bad.write_text(SLICE_UNIT.read_text().replace("CPUWeight=", "CPUWieght="))
    assert "CPUWieght" in _analyze("verify", "--man=no", str(bad)).stderr


def test_user_template_verifies_clean(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    _stub(home / ".devloop" / "bin" / "devloop")  # where the README installs it
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / "devloop@x.service"
    shutil.copy(USER_UNIT, unit)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    r = _analyze("--user", "verify", "--man=no", str(unit), env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def test_verify_would_catch_a_typo(tmp_path: pathlib.Path) -> None:
    """Guard for the test itself: verify reports an unknown key (but still exits 0)."""
    unit = _system_copy(tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nProtectSytem=strict\n"))
    r = _analyze("verify", "--man=no", str(unit))
    assert "ProtectSytem" in r.stderr


def system_exposure(unit: pathlib.Path) -> float:
    r = _analyze("security", "--offline=true", "--no-pager", str(unit))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r
    return float(m.group(1))


def test_system_template_security_exposure(tmp_path: pathlib.Path) -> None:
    from systemd_harness import FIGURES

    unit = _system_copy(tmp_path)
    exposure = system_exposure(unit)
    FIGURES["systemd-analyze security --offline=true (system)"] = f"{exposure:.1f}"
    assert exposure <= MAX_EXPOSURE
    # --threshold compares exposure x 10; it agrees with the parsed number
    r = _analyze("security", "--offline=true", "--no-pager",
                 f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit))
    assert r.returncode == 0, r.stdout


def test_system_template_key_settings(tmp_path: pathlib.Path) -> None:
    """The settings issue 3 asks for, as systemd itself parses them (json output)."""
    r = _analyze("security", "--offline=true", "--json=short", str(_system_copy(tmp_path)))
    items = {x["name"]: x for x in json.loads(r.stdout)}
    for name in ("NoNewPrivileges=", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "PrivateTmp=",
                 "PrivateDevices=", "RestrictNamespaces=~user", "RestrictSUIDSGID=",
                 "LockPersonality=", "User=/DynamicUser=", "ProtectSystem=", "ProtectHome="):
        assert name in items, (name, sorted(items))
        assert items[name]["exposure"] in (None, "0.0", "0.1"), (name, items[name])
    text = SYSTEM_UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=always", "RestartSec=5s",
                 "StartLimitBurst=5", "StartLimitIntervalSec=600",
                 "RestartPreventExitStatus=64 65 66 73 75 78", "MemoryMax=512M",
                 "CPUWeight=20", "IOWeight=20", "Nice=10", "Slice=devloop.slice",
                 "ProtectSystem=strict",
                 "ProtectHome=read-only",
                 "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n"):
        assert line in text, line
