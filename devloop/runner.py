"""Spawning one check: argv, environment, process group, timeout, bounded output.

A check runs in a session (and process group) of its own, so a timeout or a
stop reaches every process it started in that group: SIGTERM first, SIGKILL
after a grace period. stdout and stderr are captured through two pipes, each
bounded: the first and the last part are kept, the middle of a huge output is
dropped. The check's adapter (devloop/tools/) prepares the argv and reads the
result; a file list too long for one exec() is split into several runs whose
results are merged (as xargs and pre-commit do).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from devloop import tools
from devloop.config import FILES_PLACEHOLDER, Check
from devloop.findings import Finding
from devloop.logonce import Trouble
from devloop.reaper import LIVE_LEADERS, GroupLedger
from devloop.store import Outcome, Run
from devloop.tools import env as tool_env

log = logging.getLogger(__name__)

KILL_GRACE_S = 3.0
HEAD_BYTES = 512 * 1024  # kept from the start of each stream (findings come first)
TAIL_BYTES = 512 * 1024  # kept from its end (summaries come last)
STORED_OUTPUT = 64 * 1024  # of which the database keeps the tail (3/4 stdout, 1/4 stderr)
READ_CHUNK = 64 * 1024
ARG_MARGIN = 16 * 1024  # room left for what an adapter adds to the argv and environment
POINTER = 8  # each argument and variable also costs a pointer in exec()'s limit


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


def _arg_size(arg: str) -> int:
    return len(os.fsencode(arg)) + 1 + POINTER


def partition(check: Check, files: Sequence[str], env: Mapping[str, str]) -> list[list[str]]:
    """`files` in batches whose argv fits below ARG_MAX with `env` (pre-commit's
    xargs.partition). One batch when the check takes no files or they all fit."""
    if not (check.takes_files or check.shell) or not files:
        return [list(files)]
    limit = os.sysconf("SC_ARG_MAX") - ARG_MARGIN - sum(
        _arg_size(f"{k}={v}") for k, v in env.items())
    fixed = sum(_arg_size(a) for a in build_argv(check, []))
    batches: list[list[str]] = [[]]
    used = fixed
    for f in files:
        size = _arg_size(f if not f.startswith("-") else f"./{f}")
        if batches[-1] and used + size > limit:
            batches.append([])
            used = fixed
        batches[-1].append(f)
        used += size
    return batches


class _Output:
    """A bounded capture: head and tail, with the count of bytes dropped in between."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.size += len(data)
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

    def stream(self) -> tools.Stream:
        middle = f"\n[... {self.dropped} bytes of output dropped ...]\n" if self.dropped else ""
        text = (bytes(self.head).decode(errors="replace") + middle
                + bytes(self.tail).decode(errors="replace"))
        return tools.Stream(text=text, size=self.size, complete=not self.dropped)


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
                 environ: Mapping[str, str], adapter: tools.Adapter,
                 ledger: GroupLedger | None = None) -> None:
        self.check = check
        self.adapter = adapter  # found with the config: importing it is not a save's wait
        self.ledger = ledger
        self.root = root
        self.files = tuple(files)
        self.whole = whole
        self.environ = environ
        self._cancelled = asyncio.Event()
        self.whole_program = False  # its adapter checks everything, whatever the files

    def cancel(self) -> None:
        self._cancelled.set()

    async def run(self) -> tuple[Run, list[Finding]]:
        started = time.time()
        t0 = time.monotonic()
        adapter = self.adapter
        temporary: Path | None = None
        try:
            cache = tool_env.cache_dir(self.root, self.environ)
        except OSError as exc:  # read-only .devloop/, a planted symlink: the check still runs
            _cache_trouble.report(f"cannot use the tool cache directory ({exc}): this run uses a "
                           "temporary one")
            cache = temporary = Path(tempfile.mkdtemp(prefix="devloop-cache-"))
        else:
            _cache_trouble.clear()
        try:
            return await self._run_in(adapter, cache, started, t0)
        finally:
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)

    async def _run_in(self, adapter: tools.Adapter, cache: Path, started: float, t0: float,
                      ) -> tuple[Run, list[Finding]]:
        env = tool_env.environment(self.root, self.environ, cache)
        reports: list[tools.Report] = []
        texts: list[str] = []
        code: int | None = None
        outcome: Outcome = "pass"
        self.whole_program = adapter.whole_program
        batches = [list(self.files)] if adapter.whole_program else partition(
            self.check, self.files, env)
        for batch in batches:
            remaining = self.check.timeout_s - (time.monotonic() - t0)
            batch_code, batch_outcome, text, report = await self._run_batch(
                adapter, batch, dict(env), cache, max(remaining, 0.001))
            if code in (None, 0):  # the first batch that did not pass gives the exit code
                code = batch_code
            texts.append(text)
            reports.append(report)
            if batch_outcome != "pass":
                outcome = batch_outcome
            if batch_outcome not in ("pass", "fail"):
                break  # error, timeout or cancelled: the check as a whole is that
        report = tools.merge(reports)
        if outcome not in ("pass", "fail"):
            report = tools.Report(reason=report.reason)
        return (self._result(started, t0, code, outcome, "\n".join(texts), report),
                report.findings)

    async def _run_batch(self, adapter: tools.Adapter, files: Sequence[str],
                         env: dict[str, str], cache: Path, timeout: float,
                         ) -> tuple[int | None, Outcome, str, tools.Report]:
        report_dir = _report_dir(cache) if adapter.wants_report_dir else None
        try:
            inv = tools.Invocation(argv=build_argv(self.check, files), env=env, root=self.root,
                                   files=tuple(files), whole=self.whole,
                                   report_dir=report_dir, cache_dir=cache)
            try:
                await adapter.prepare(inv)
            except Exception as exc:  # the check fails visibly; the daemon goes on
                log.exception("check %s: the %s adapter failed to prepare the run",
                              self.check.name, adapter.name)
                msg = f"devloop: cannot prepare the run: {exc}"
                return None, "error", msg, tools.Report(reason=msg)
            return await self._spawn(adapter, inv, timeout)
        finally:
            if report_dir is not None:
                shutil.rmtree(report_dir, ignore_errors=True)

    async def _spawn(self, adapter: tools.Adapter, inv: tools.Invocation, timeout: float,
                     ) -> tuple[int | None, Outcome, str, tools.Report]:
        out, err = _Output(), _Output()
        # Our own pipes, not asyncio's: a process that escapes the group and keeps a
        # pipe open must not keep the run from ending (asyncio waits for its pipes).
        rout, wout = os.pipe2(os.O_CLOEXEC)
        rerr, werr = os.pipe2(os.O_CLOEXEC)
        try:
            proc = await asyncio.create_subprocess_exec(
                *inv.argv,
                cwd=self.root,
                env=inv.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=wout,
                stderr=werr,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(rout)
            os.close(rerr)
            reason = "argument list too long" if exc.errno == errno.E2BIG else exc.strerror
            msg = f"devloop: cannot start {inv.argv[0]!r}: {reason}"
            return None, "error", msg, tools.Report(reason=msg)
        finally:
            os.close(wout)
            os.close(werr)
        LIVE_LEADERS.add(proc.pid)
        if self.ledger is not None:
            self.ledger.add(proc.pid)
        eofs = [self._read(rout, out), self._read(rerr, err)]
        waiter = asyncio.create_task(proc.wait())
        waiter.add_done_callback(lambda _: LIVE_LEADERS.discard(proc.pid))
        cancel = asyncio.create_task(self._cancelled.wait())
        outcome: Outcome | None = None
        try:
            done, _ = await asyncio.wait(
                {waiter, cancel}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED,
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
                # the rest of the output; an escaped process may hold a pipe for ever
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*eofs)), 1.0)
            loop = asyncio.get_running_loop()
            for fd in (rout, rerr):
                loop.remove_reader(fd)
                os.close(fd)
        code = proc.returncode
        if outcome is None:
            if code == 0:
                outcome = "pass"
            elif code is not None and (code < 0 or code in (126, 127)):
                outcome = "error"
            else:
                outcome = "fail"
        finished = tools.Finished(stdout=out.stream(), stderr=err.stream(),
                                  exit_code=code if code is not None else -1)
        text = _stored_text(finished)
        if outcome == "timeout":
            text += f"\ndevloop: timed out after {self.check.timeout_s:g}s"
        report = tools.Report()
        if outcome in ("pass", "fail"):
            try:
                report = adapter.parse(inv, finished)
            except Exception as exc:  # a bug in reading a report must not stop the daemon
                log.exception("check %s: the %s adapter failed to read the result",
                              self.check.name, adapter.name)
                report = tools.Report(reason=f"devloop: cannot read the result: {exc}")
            if report.outcome is not None:
                outcome = report.outcome
        return code, outcome, text, report

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
                text: str, report: tools.Report) -> Run:
        return Run(
            check=self.check.name,
            started=started,
            duration=time.monotonic() - t0,
            exit_code=code,
            outcome=outcome,
            files=None if self.whole else self.files,
            output=text[-STORED_OUTPUT:],
            covers_all=self.whole or not self.check.takes_files or self.whole_program,
            counts=report.counts,
            reason=report.reason,
        )


def _report_dir(cache: Path) -> Path:
    """A new private directory for one run's report, in the cache if it can take one."""
    try:
        runs = cache / "runs"
        runs.mkdir(mode=0o700, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run.", dir=runs))
    except OSError:  # a cache that cannot take more (read-only, full): elsewhere
        return Path(tempfile.mkdtemp(prefix="devloop-run-"))


_cache_trouble = Trouble(log, "the tool cache directory works again", logging.WARNING)


def _stored_text(done: tools.Finished) -> str:
    """Both streams for the record: the tail of stdout, then the tail of stderr."""
    text = done.stdout.text[-(STORED_OUTPUT * 3 // 4):]
    if done.stderr.text.strip():
        text += f"\n[stderr]\n{done.stderr.text[-(STORED_OUTPUT // 4):]}"
    return text
