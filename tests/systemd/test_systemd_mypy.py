"""The dmypy server under the real unit: in the unit's cgroup, its status file in
CacheDirectory=, every file a change breaks reported, nothing left after `systemctl stop`."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from systemd_harness import USER, DevloopSystem, wait_for

pytestmark = pytest.mark.systemd

TOML = textwrap.dedent("""\
    [checks.mypy]
    command = ["mypy"]
    patterns = ["*.py", "pyproject.toml"]
    debounce_ms = 0
    """)
A_INT = "def f() -> int:\n    return 1\n"
A_STR = 'def f() -> str:\n    return "x"\n'
FILES = {
    "pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n',
    "pkg/__init__.py": "",
    "pkg/a.py": A_INT,
    "pkg/b.py": "from pkg.a import f\n\n\ndef g() -> int:\n    return f()\n",
}


def mypy_result(sys_: DevloopSystem, project: str) -> dict[str, Any] | None:
    r = sys_.devloop("status", "--json", project)
    if not r.stdout.strip().startswith("["):
        return None
    return next((st for st in json.loads(r.stdout) if st["check"] == "mypy"), None)


def test_dmypy_server_in_the_unit_and_gone_after_stop(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "dmypy"
    d = sys_.make_project(name, TOML, files=FILES)
    sys_.sd.as_user(USER, ["/usr/bin/python3", "-m", "venv", f"{d}/.venv"])
    sys_.sd.as_user(USER, [f"{d}/.venv/bin/pip", "install", "-q", "--disable-pip-version-check",
                           "mypy"], timeout=900)
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        first = wait_for(lambda: mypy_result(sys_, d), timeout=180, what="a mypy result")
        assert first["outcome"] == "pass", first["output"]
        cache = f"/var/cache/devloop/{name}"
        status = sys_.sd.sh(f"cat {cache}/dmypy-*.json").stdout
        pid = json.loads(status)["pid"]
        assert pid in sys_.cgroup_pids(name)  # the unit's cgroup holds it
        assert sys_.sd.run(["ls", "-A", d]).stdout.split() == [
            ".devloop", ".venv", "devloop.toml", "pkg", "pyproject.toml"]

        sys_.sd.write_file(f"{d}/pkg/a.py", A_STR, owner=USER)
        broken = wait_for(lambda: (lambda st: st if st and st["started"] > first["started"]
                                   else None)(mypy_result(sys_, d)),
                          timeout=120, what="a fresh mypy result")
        assert broken["outcome"] == "fail"
        assert [f["file"] for f in broken["findings"]] == ["pkg/b.py"]

        sys_.sd.systemctl("stop", sys_.unit(name))
        assert sys_.sd.run(["test", "-e", f"/proc/{pid}"], check=False).returncode != 0
        assert sys_.sd.run(["pgrep", "-f", "dmypy"], check=False).stdout == ""
    finally:
        sys_.remove_project(name)
