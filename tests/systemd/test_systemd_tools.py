"""Real tools under the real unit: the project's venv, hypothesis, no tool state in the tree.

The project (read-only to the unit: ProtectHome=read-only) has its own .venv with
pytest and hypothesis, built by alice from PyPI. Seen before: a hypothesis test that
passes outside failed inside ("default location is unusable ... .hypothesis/examples").
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from systemd_harness import USER, DevloopSystem, wait_for

pytestmark = pytest.mark.systemd

TOML = textwrap.dedent("""\
    [checks.pytest]
    command = ["pytest", "-q"]
    patterns = ["*.py"]
    debounce_ms = 0

    [checks.syntax]
    command = ["python", "-m", "devloop.tools.pysyntax", "{files}"]
    patterns = ["*.py"]
    debounce_ms = 0
    """)

FILES = {
    "conftest.py": "",
    "pkg/__init__.py": "",
    "pkg/mod.py": "def double(n: int) -> int:\n    return n * 2\n",
    "tests/test_h.py": textwrap.dedent("""\
        import shutil
        import subprocess

        from hypothesis import given, strategies as st

        from pkg.mod import double


        @given(st.integers())
        def test_double(n):
            assert double(n) == n + n


        def test_the_venv_is_first_on_path():
            assert shutil.which("pytest").endswith("/.venv/bin/pytest")
            subprocess.run(["pytest", "--version"], check=True)
        """),
}
TOOL_STATE = (".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".benchmarks",
              "__pycache__", ".testmondata", ".dmypy.json")


def results(sys_: DevloopSystem, project: str) -> dict[str, dict[str, Any]]:
    r = sys_.devloop("status", "--json", project)
    if not r.stdout.strip().startswith("["):
        return {}
    return {st["check"]: st for st in json.loads(r.stdout)}


def test_hypothesis_passes_under_the_unit_and_no_tool_state_lands_in_the_project(
        devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "hyp"
    d = sys_.make_project(name, TOML, files=FILES)
    sys_.sd.as_user(USER, ["/usr/bin/python3", "-m", "venv", f"{d}/.venv"])
    sys_.sd.as_user(USER, [f"{d}/.venv/bin/pip", "install", "-q", "--disable-pip-version-check",
                           "pytest", "hypothesis"], timeout=900)
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        got = wait_for(lambda: (lambda r: r if {"pytest", "syntax"} <= set(r) else None)(
            results(sys_, d)), timeout=120, what="both checks' results")
        assert got["pytest"]["outcome"] == "pass", got["pytest"]["output"]
        assert got["syntax"]["outcome"] == "pass", got["syntax"]["output"]
        found = sys_.sd.run(["find", d, "-path", f"{d}/.venv", "-prune", "-o", "-path",
                             f"{d}/.devloop", "-prune", "-o", "-print"]).stdout.split()
        assert [p for p in found if p.rsplit("/", 1)[-1] in TOOL_STATE] == []
        cache = f"/var/cache/devloop/{name}"
        listed = sys_.sd.run(["ls", cache]).stdout.split()
        assert {"hypothesis", "pytest"} <= set(listed), listed
    finally:
        sys_.remove_project(name)
