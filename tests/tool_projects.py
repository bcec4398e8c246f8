"""Real projects with their own venv (pytest, hypothesis, ruff, mypy, pytest-testmon,
pytest-benchmark),
for the tool adapters' tests; the venv is built once per session from PyPI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from devloop import config, tools
from devloop.daemon import use_pidfd_child_watcher
from devloop.findings import Finding
from devloop.runner import CheckRun
from devloop.store import Run

VENV_PACKAGES = ("pytest", "hypothesis", "ruff", "mypy", "pytest-testmon", "pytest-benchmark")

# what no check may leave in the project tree
TOOL_STATE = (".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".benchmarks",
              "__pycache__", ".testmondata", ".dmypy.json")


def make_venv(where: Path, packages: tuple[str, ...] = VENV_PACKAGES) -> Path:
    """A real venv with `packages` installed from PyPI."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", *packages], check=True, timeout=900)
    return where


def attach_venv(root: Path, venv: Path) -> None:
    """The session's venv as the project's `.venv` (a symlink: built once)."""
    (root / ".venv").symlink_to(venv)


def check(table: str, name: str = "c") -> config.Check:
    """One check from a devloop.toml table's body."""
    return config.parse(tomllib.loads(f"[checks.{name}]\n{table}"), "devloop.toml").checks[0]


def run_check(root: Path, chk: config.Check, files: list[str] | None = None, *,
              environ: dict[str, str] | None = None) -> tuple[Run, list[Finding]]:
    """One real run of `chk`: over `files` (a change), or the whole project when None."""
    (root / ".devloop").mkdir(mode=0o700, exist_ok=True)
    if files is None:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and chk.matches(str(p.relative_to(root)))
                       and not str(p.relative_to(root)).startswith((".venv", ".devloop")))
        whole = True
    else:
        whole = False
    use_pidfd_child_watcher()

    async def go() -> tuple[Run, list[Finding]]:
        return await CheckRun(chk, root, files, whole=whole,
                              environ=os.environ if environ is None else environ,
                              adapter=tools.adapter_for(chk)).run()

    return asyncio.run(go())


def tool_state_in(root: Path) -> list[str]:
    """Tool state files or directories anywhere in the project (but its venv and .devloop)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in (".venv", ".devloop"):
            dirnames[:] = []
            continue
        found += [os.path.join(rel, n) for n in dirnames + filenames if n in TOOL_STATE]
    return found
