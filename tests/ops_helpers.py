"""Shared helpers for the operations tests (background, supervisor, service, metrics...).

Everything runs the real `devloop` executable in subprocesses: no mocks at the OS boundary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from daemon_proc import wait_for  # noqa: F401  (re-exported for the ops tests)

REPO = Path(__file__).resolve().parents[1]


def devloop_exe() -> str:
    """The console script of the devloop under test (next to this interpreter)."""
    script = Path(sys.executable).parent / "devloop"
    if os.access(script, os.X_OK):
        return str(script)
    found = shutil.which("devloop")
    assert found, "the devloop console script is not installed (pip install -e .)"
    return found


def devloop(*args: str, timeout: float = 60, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([devloop_exe(), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          check=False)


def make_project(path: Path, toml: str, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "devloop.toml").write_text(toml)
    for rel, text in (files or {}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def alive(pid: int) -> bool:
    """Running and not a zombie (a zombie has exited, whoever reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_in(project: Path, marker: str) -> list[int]:
    """Live PIDs whose command line contains `marker` (a project's unique check text)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def lock_pid(project: Path) -> int | None:
    try:
        text = (project / ".devloop" / "daemon.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def background(project: Path, *args: str) -> Iterator[subprocess.CompletedProcess[str]]:
    """`devloop watch DIR` (detached); stopped, or killed, afterwards whatever happens."""
    r = devloop("watch", str(project), *args, timeout=120)
    try:
        yield r
    finally:
        pid = lock_pid(project)
        devloop("stop", str(project), timeout=60)
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
