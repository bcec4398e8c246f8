"""Spawning one check: argv, scrubbed environment, process group, timeout, bounded output.

A check runs in a session (and process group) of its own, so a timeout or a
stop reaches every process it started in that group: SIGTERM first, SIGKILL
after a grace period. Output is captured through a pipe and bounded: the
first and the last part are kept, the middle of a huge output is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from devloop.config import FILES_PLACEHOLDER, Check
from devloop.findings import Finding, parse
from devloop.reaper import LIVE_LEADERS, GroupLedger
from devloop.store import Outcome, Run

log = logging.getLogger(__name__)

KILL_GRACE_S = 3.0
HEAD_BYTES = 512 * 1024  # kept from the start of the output (findings come first)
TAIL_BYTES = 512 * 1024  # kept from its end (summaries come last)
STORED_OUTPUT = 64 * 1024  # of which the database keeps the tail
READ_CHUNK = 64 * 1024
SCRUBBED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")


def check_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a check sees: ours, minus what belongs to the daemon's service manager."""
    return {
        k: v
        for k, v in environ.items()
        if k not in SCRUBBED and not k.startswith("LISTEN_")
    }


def build_argv(check: Check, files: Sequence[str]) -> list[str]:
    """`{files}` becomes one argument per file; with shell=true files are "$@", never text."""
    if check.shell:
        return ["/bin/sh", "-c", check.command[0], check.name, *files]
    argv: list[str] = []
    for arg in check.command:
        if arg == FILES_PLACEHOLDER:
            argv.extend(f if not f.startswith("-") else f"./{f}" for f in files)
        else:
            argv.append(arg)
    return argv


class _Output:
    """A bounded capture: head and tail, with the count of bytes dropped in between."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            excess = len(self.tail) - TAIL_BYTES
            if excess > 0:
                del self.tail[:excess]
                self.dropped += excess

    def text(self) -> str:
        middle = f"\n[... {self.dropped} bytes of output dropped ...]\n" if self.dropped else ""
        return (bytes(self.head).decode(errors="replace") + middle
                + bytes(self.tail).decode(errors="replace"))


def _kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


class CheckRun:
    """One run of one check. `await run()`; `cancel()` stops it from elsewhere on the loop."""

    def __init__(self, check: Check, root: Path, files: Sequence[str], *, whole: bool,
                 environ: Mapping[str, str], ledger: GroupLedger | None = None) -> None:
        self.check = check
        self.ledger = ledger
        self.root = root
        self.files = tuple(files)
        self.whole = whole
        self.environ = environ
        self._cancelled = asyncio.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    async def run(self) -> tuple[Run, list[Finding]]:
        started = time.time()
        t0 = time.monotonic()
        argv = build_argv(self.check, self.files)
        out = _Output()
        # Our own pipe, not asyncio's: a process that escapes the group and keeps the
        # pipe open must not keep the run from ending (asyncio waits for its pipes).
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.root,
                env=check_environment(self.environ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=wfd,
                stderr=wfd,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(rfd)
            reason = "argument list too long" if exc.errno == errno.E2BIG else exc.strerror
            msg = f"devloop: cannot start {argv[0]!r}: {reason}"
            return self._result(started, t0, None, "error", msg), []
        finally:
            os.close(wfd)
        LIVE_LEADERS.add(proc.pid)
        if self.ledger is not None:
            self.ledger.add(proc.pid)
        eof = self._read(rfd, out)
        waiter = asyncio.create_task(proc.wait())
        waiter.add_done_callback(lambda _: LIVE_LEADERS.discard(proc.pid))
        cancel = asyncio.create_task(self._cancelled.wait())
        outcome: Outcome | None = None
        try:
            done, _ = await asyncio.wait(
                {waiter, cancel}, timeout=self.check.timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiter not in done:
                outcome = "cancelled" if cancel in done else "timeout"
                await self._terminate(proc, waiter)
        except asyncio.CancelledError:  # the daemon is stopping
            await asyncio.shield(self._terminate(proc, waiter))
            raise
        finally:
            cancel.cancel()
            # Whatever is left of the group (grandchildren) goes with the check.
            _kill_group(proc.pid, signal.SIGKILL)
            if self.ledger is not None:
                self.ledger.remove(proc.pid)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                # the rest of the output; an escaped process may hold the pipe for ever
                await asyncio.wait_for(asyncio.shield(eof), 1.0)
            asyncio.get_running_loop().remove_reader(rfd)
            os.close(rfd)
        code = proc.returncode
        if outcome is None:
            if code == 0:
                outcome = "pass"
            elif code is not None and (code < 0 or code in (126, 127)):
                outcome = "error"
            else:
                outcome = "fail"
        text = out.text()
        if outcome == "timeout":
            text += f"\ndevloop: timed out after {self.check.timeout_s:g}s"
        findings = parse(self.root, text) if outcome in ("pass", "fail") else []
        return self._result(started, t0, code, outcome, text), findings

    async def _terminate(self, proc: asyncio.subprocess.Process, waiter: asyncio.Task[int]) -> None:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), KILL_GRACE_S)
        except TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await waiter

    @staticmethod
    def _read(fd: int, out: _Output) -> asyncio.Future[None]:
        """Feed `out` from the pipe on the loop; the future is done at end of file."""
        loop = asyncio.get_running_loop()
        eof: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)

        def readable() -> None:
            for _ in range(16):  # up to 1 MiB per turn of the loop, then let others run
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(fd)
                    if not eof.done():
                        eof.set_result(None)
                    return
                out.feed(data)

        loop.add_reader(fd, readable)
        return eof

    def _result(self, started: float, t0: float, code: int | None, outcome: Outcome,
                text: str) -> Run:
        stored = text[-STORED_OUTPUT:]
        return Run(
            check=self.check.name,
            started=started,
            duration=time.monotonic() - t0,
            exit_code=code,
            outcome=outcome,
            files=None if self.whole else self.files,
            output=stored,
            covers_all=self.whole or not self.check.takes_files,
        )
