"""A real `devloop watch --foreground` in a child process, with a real NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
RECORD = str(Path(__file__).with_name("record.py"))


def wait_for(pred: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until pred() is truthy; the timeout only keeps a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def devloop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a child process."""
    return subprocess.run([sys.executable, "-m", "devloop", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def status_json(root: Path) -> list[dict[str, Any]]:
    """`devloop status --json`, or [] while there are no results."""
    r = devloop("status", str(root), "--json")
    return json.loads(r.stdout) if r.stdout.strip() else []  # type: ignore[no-any-return]


def ran_files(log: Path) -> set[str]:
    """Every file any recorded run was given."""
    return {f for run in read_runs(log) for f in run["files"]}


def record_check(log: Path, patterns: list[str], **extra: Any) -> str:
    """A [checks.NAME] body that records each run in `log`."""
    body = {
        "command": [sys.executable, RECORD, str(log), "{files}"],
        "patterns": patterns,
        "debounce_ms": 0,
        "run_on_start": False,
        **extra,
    }
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items()) + "\n"


def read_runs(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    text = log.read_text(encoding="utf-8", errors="surrogateescape")
    # a run being recorded may be read half-written: only whole lines count
    return [json.loads(line) for line in text.splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


def alive(pid: int | str) -> bool:
    """Running, not a zombie waiting for its (new) parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def inotify_watches(pid: int) -> int:
    """How many inotify watches the process holds, from /proc/PID/fdinfo."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += sum(line.startswith("inotify wd:") for line in text.splitlines())
    return count


class DaemonProc:
    def __init__(self, root: Path, *, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.root = root
        self._tmp = tempfile.TemporaryDirectory(prefix="devloop-notify-")
        self.sock_path = os.path.join(self._tmp.name, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.messages: list[str] = []
        self.log_path = Path(self._tmp.name) / "stderr.log"
        full_env = {**os.environ, "NOTIFY_SOCKET": self.sock_path, **(env or {})}
        full_env.pop("JOURNAL_STREAM", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "devloop", "watch", "--foreground",
             str(root)],
            env=full_env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def drain(self, timeout: float = 0.0) -> None:
        self.sock.settimeout(timeout if timeout > 0 else 0.0)  # never blocks for ever
        try:
            while True:
                data = self.sock.recv(65536)
                self.messages.append(data.decode())
                self.sock.setblocking(False)
        except (BlockingIOError, TimeoutError):
            pass

    def sent(self, field: str) -> bool:
        self.drain()
        return any(field in m.split("\n") for m in self.messages)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log}")
            self.drain(0.05)
            return self.sent("READY=1")
        wait_for(ready, timeout, "READY=1")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.drain()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.sock.close()
        self._tmp.cleanup()
