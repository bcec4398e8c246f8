"""`devloop mcp DIR`: the project's check results as Model Context Protocol tools, over stdio.

Only `devloop mcp` imports this module (and with it the MCP SDK, the optional extra
`mcp` of devloop-daemon): the daemon never loads it. Every answer is small on purpose: a model
reads it whole, so the summary comes first and findings are capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from devloop import __version__, config, results, statedir
from devloop.commands.run import _run_once
from devloop.commands.status import DEFAULT_LIMIT, summary_line
from devloop.commands.status import _ago as ago
from devloop.core.daemon_health import STATE_DIR
from devloop.daemon import use_pidfd_child_watcher
from devloop.errors import DevloopError
from devloop.store import DB_NAME, FAILING, CheckState

DEFAULT_FINDINGS = DEFAULT_LIMIT  # per check, as `devloop status` shows them
MAX_FINDINGS_FOR = 50  # of one file, all checks together
MAX_MESSAGE = 300  # characters of one finding's message
MAX_WAITERS = 8  # wait_until_fresh calls at once (each holds an inotify instance)
MAX_TIMEOUT_S = 3600.0
CLEANUP_S = 10.0  # a cancelled run's checks get SIGTERM, then SIGKILL 3 s later

F = TypeVar("F", bound=Callable[..., Any])

INSTRUCTIONS = """\
DevLoop watches this project and runs its checks (linters, type checkers, tests) on every
save. After you edit files, call wait_until_fresh: it returns once every check the edit
triggers has a result covering it, with the failures. Use status for the whole picture,
findings_for for one file, and run when no daemon is watching (status says whether one is).
"""


class Project:
    """One project directory, and the runs this server has in flight there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()  # runs in flight, stopped on a signal
        self.waiters = threading.BoundedSemaphore(MAX_WAITERS)

    def snapshot(self, checks: Sequence[str] | None = None) -> dict[str, Any] | None:
        """`devloop status --json`'s view (results.snapshot); None when nothing ran yet."""
        if not (self.root / STATE_DIR / DB_NAME).exists():
            return None
        try:
            snap = results.snapshot(self.root)
        except DevloopError as exc:
            raise ToolError(exc.message) from None
        if checks:
            known = [e["check"] for e in snap["checks"]]
            unknown = [c for c in checks if c not in known]
            if unknown:
                raise ToolError(f"unknown check {', '.join(map(repr, unknown))}; the checks "
                                f"are: {', '.join(known) or 'none yet'}")
            snap = results.snapshot(self.root, checks)
        return snap

    def config(self) -> config.Config:
        try:
            return config.load(self.root)
        except DevloopError as exc:
            raise ToolError(exc.message) from None

    def relative(self, path: str) -> str:
        """`path` (absolute, or relative to the root) as the results name it; outside: error."""
        if not path.strip() or "\0" in path:
            raise ToolError("path must be a file name, relative to the project root or absolute")
        full = os.path.normpath(os.path.join(self.root, path))
        rel = os.path.relpath(full, self.root)
        if rel == ".":
            raise ToolError(f"{path} is the project root: call status for all of it")
        if rel.startswith(".."):
            raise ToolError(f"{path} is not a file inside the project {self.root}")
        real = os.path.relpath(os.path.realpath(full), self.root)
        if real == "." or real.startswith(".."):
            raise ToolError(f"{path} leads out of the project {self.root} (a symlink)")
        return rel


def _finding(f: dict[str, Any], check: str | None = None) -> str:
    """One line, as `devloop status` prints it: `file:line:col: severity: message [code]`."""
    col = f":{f['column']}" if f["column"] is not None else ""
    code = f" [{f['code']}]" if f["code"] else ""
    msg = f["message"]
    if len(msg) > MAX_MESSAGE:
        msg = msg[:MAX_MESSAGE] + "…"
    who = f"{check}: " if check else ""
    return f"{who}{f['file']}:{f['line']}{col}: {f['severity']}: {msg}{code}"


def _check_entry(e: dict[str, Any], cap: int | None) -> dict[str, Any]:
    """A check of results.snapshot(), made small: what a model needs, findings capped."""
    entry: dict[str, Any] = {"check": e["check"], "state": e["state"], "outcome": e["outcome"],
                             "stale": e["stale"]}
    if e["outcome"] is None:
        return {**entry, "findings_total": 0, "findings": []}
    files = e["files"]
    entry.update({
        "ran": ago(e["started"]),
        "duration_s": round(e["duration"], 2),
        "scope": ("whole project" if files is None or e["covers_all"]
                  else f"{len(files)} file{'s' * (len(files) != 1)}"),
    })
    if e.get("counts"):
        entry["counts"] = e["counts"]
    findings = e["findings"]
    shown = findings if cap is None else findings[:cap]
    entry["findings_total"] = len(findings)
    entry["findings"] = [_finding(f) for f in shown]
    if len(shown) < len(findings):
        entry["more_findings"] = len(findings) - len(shown)
    if e.get("reason") and (e["outcome"] != "fail" or not findings):
        entry["reason"] = e["reason"][:MAX_MESSAGE * 3]
    return entry


def _summary(snap: dict[str, Any]) -> str:
    """`devloop status`'s summary line, then who keeps the results true."""
    d = snap["daemon"]
    watch = (f"a daemon is watching (PID {d['pid']})" if d["running"]
             else "no daemon is running: results may be stale (the run tool checks now)")
    return f"{summary_line(snap)}; {watch}"


def _answer(snap: dict[str, Any], cap: int | None) -> dict[str, Any]:
    return {"summary": _summary(snap),
            "daemon": {k: snap["daemon"][k] for k in ("running", "pid")},
            "checks": [_check_entry(e, cap) for e in snap["checks"]]}


def _no_results(project: Project) -> dict[str, Any]:
    pid = results.daemon_pid(project.root)
    then = ("A daemon is watching: it runs them on start and on every save; call "
            "wait_until_fresh." if pid else "No daemon is running: call run.")
    return {"summary": f"no results yet: no check has run. {then}",
            "daemon": {"running": pid is not None, "pid": pid}, "checks": []}


def status_result(project: Project, checks: list[str] | None, all_findings: bool,
                  max_findings: int) -> dict[str, Any]:
    if max_findings < 0:
        raise ToolError("max_findings must be 0 or more")
    snap = project.snapshot(checks)
    if snap is None:
        if checks:
            raise ToolError(f"unknown check {', '.join(map(repr, checks))}: no check has run")
        return _no_results(project)
    return _answer(snap, None if all_findings else max_findings)


def file_findings(project: Project, path: str) -> dict[str, Any]:
    rel = project.relative(path)
    snap = project.snapshot()
    if snap is None:
        return {**_no_results(project), "path": rel, "findings": []}
    is_dir = (project.root / rel).is_dir()  # then every file below it
    try:
        mtime: float | None = None if is_dir else os.stat(project.root / rel).st_mtime
    except OSError:
        mtime = None
    lines: list[str] = []
    behind: list[str] = []
    for e in snap["checks"]:
        lines.extend(_finding(f, e["check"]) for f in e["findings"]
                     if (f["file"].startswith(f"{rel}/") if is_dir else f["file"] == rel))
        if e["state"] in ("queued", "running"):
            behind.append(f"{e['check']} is {e['state']}")
        elif mtime is not None and e["outcome"] is not None and mtime > e["started"]:
            behind.append(f"{e['check']} last ran before it changed")
    summary = f"{rel}{'/' * is_dir}: {len(lines)} finding{'s' * (len(lines) != 1)}"
    if mtime is None and not is_dir:
        summary += " (no such file now)"
    if behind:
        summary += (f"; may be stale ({'; '.join(behind)}): call wait_until_fresh"
                    + ("" if snap["daemon"]["running"] else " or run") + " for results that "
                    "cover it")
    result: dict[str, Any] = {"summary": summary, "path": rel,
                              "daemon": {k: snap["daemon"][k] for k in ("running", "pid")},
                              "checks": [e["check"] for e in snap["checks"]],
                              "findings": lines[:MAX_FINDINGS_FOR]}
    if len(lines) > MAX_FINDINGS_FOR:
        result["more_findings"] = len(lines) - MAX_FINDINGS_FOR
    return result


async def wait_fresh(project: Project, timeout_s: float, checks: list[str] | None
                     ) -> dict[str, Any]:
    """`devloop status --wait`: results.wait_fresh, in a thread of its own.

    It sleeps on inotify and the daemon's pidfd, never longer than `timeout_s`. The
    thread is a daemon thread, so a call cancelled meanwhile never holds the process
    up; it ends by itself at its timeout.
    """
    _check_timeout(timeout_s)
    project.snapshot(checks)  # unknown check names: an error now, not after the wait
    if not project.waiters.acquire(blocking=False):
        raise ToolError(f"{MAX_WAITERS} waits are already in flight; try again when one "
                        "returns")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def settle(value: dict[str, Any] | None, error: BaseException | None) -> None:
        if done.done():  # the call was cancelled meanwhile
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value or {})

    def wait() -> None:
        value: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            value = results.wait_fresh(project.root, timeout_s, checks or None)
        except DevloopError as exc:
            error = ToolError(exc.message)
        except Exception as exc:  # handed to the loop: the SDK reports it as a crash
            error = exc
        finally:
            project.waiters.release()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    t0 = time.monotonic()
    threading.Thread(target=wait, name="wait_fresh", daemon=True).start()
    snap = await done
    answer = _answer(snap, DEFAULT_FINDINGS)
    took = time.monotonic() - t0
    if snap["fresh"]:
        answer["summary"] = f"fresh after {took:.1f}s: {answer['summary']}"
    else:
        busy = [e["check"] for e in snap["checks"] if e["state"] != "idle"]
        answer["summary"] = (f"NOT fresh: timed out after {timeout_s:g}s, still waiting for "
                             f"{', '.join(busy) or 'the daemon to catch up'}; results below "
                             f"may be stale. {answer['summary']}")
    return {"fresh": snap["fresh"], **answer}


async def run_checks(project: Project, files: list[str] | None, timeout_s: float
                     ) -> dict[str, Any]:
    """`devloop run` in this process: the project's configured checks, nothing else.

    The run is its own asyncio task, outside the SDK's cancel scopes, so when the call
    times out or the client goes away its checks are stopped (SIGTERM to each process
    group, SIGKILL 3 s later) and awaited, never left running.
    """
    _check_timeout(timeout_s)
    rel = None if not files else [project.relative(f) for f in files]
    cfg = project.config()
    if project.run_lock.locked():
        raise ToolError("a run started by an earlier call is still in progress; "
                        "call status when it is done")
    async with project.run_lock:
        try:
            state_dir = statedir.ensure(project.root)
        except DevloopError as exc:
            raise ToolError(exc.message) from None
        t0 = time.monotonic()
        task = asyncio.get_running_loop().create_task(
            _run_once(project.root, state_dir, cfg, rel))
        project.tasks.add(task)
        task.add_done_callback(project.tasks.discard)
        try:
            done = await _bounded(task, timeout_s)
        except DevloopError as exc:  # say, the results database cannot be opened
            raise ToolError(exc.message) from None
    if done is None:
        raise ToolError(f"the checks did not finish within timeout_s={timeout_s:g}: they were "
                        "stopped. Call run again with a larger timeout_s, or on fewer files.")
    if not done:
        what = "the given files trigger no check" if rel else "no check has any file to check"
        return {"summary": f"nothing ran: {what}", "checks": []}
    entries = [{**results.result_entry(st), "state": None, "stale": False} for st in done]
    pid = results.daemon_pid(project.root)
    failing = sum(e["outcome"] in FAILING for e in entries)
    snap = {"project": str(project.root), "daemon": {"running": pid is not None, "pid": pid},
            "summary": {"checks": len(entries), "failing": failing, "running": 0, "queued": 0,
                        "stale": 0},
            "checks": entries}
    out = _answer(snap, DEFAULT_FINDINGS)
    also = f"; a daemon is watching too (PID {pid})" if pid is not None else ""
    out["summary"] = f"ran now, in {time.monotonic() - t0:.1f}s: {summary_line(snap)}{also}"
    return out


async def _bounded(task: asyncio.Task[list[CheckState]], timeout_s: float
                   ) -> list[CheckState] | None:
    """The task's result, or None after `timeout_s`; cancelled and awaited on the way out."""
    try:
        with anyio.move_on_after(timeout_s):
            return await asyncio.shield(task)
        return None
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_S):
                await asyncio.wait({task})


def _check_timeout(timeout_s: float) -> None:
    if not timeout_s >= 0:  # also NaN
        raise ToolError(f"timeout_s must be 0 or more seconds, not {timeout_s}")
    if timeout_s > MAX_TIMEOUT_S:
        raise ToolError(f"timeout_s is at most {MAX_TIMEOUT_S:g} seconds")


def build(project: Project) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("devloop", version=__version__,
                                       instructions=INSTRUCTIONS)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    def tool(name: str, annotations: ToolAnnotations) -> Callable[[F], F]:
        """Register `fn` under `name`, its docstring (dedented) as the model reads it."""
        def register(fn: F) -> F:
            server.add_tool(fn, name=name, description=inspect.cleandoc(fn.__doc__ or ""),
                            annotations=annotations)
            return fn
        return register

    @tool("status", read_only)
    def status(
        checks: Annotated[list[str] | None, Field(
            description="only these checks (names as status lists them); default: all")] = None,
        all_findings: Annotated[bool, Field(
            description="every finding, not just the first max_findings per check")] = False,
        max_findings: Annotated[int, Field(
            description="findings shown per check (default 10)")] = DEFAULT_FINDINGS,
    ) -> dict[str, Any]:
        """The project's check results now: a one-line summary first (how many checks,
        which fail, whether a daemon is watching), then per check its outcome, when it ran,
        and its findings as `file:line:col: severity: message [code]`, capped per check."""
        return status_result(project, checks, all_findings, max_findings)

    @tool("wait_until_fresh", read_only)
    async def wait_until_fresh(
        timeout_s: Annotated[float, Field(
            description="give up after this many seconds (default 60); the answer then "
            "says fresh: false")] = 60.0,
        checks: Annotated[list[str] | None, Field(
            description="wait only for these checks; default: all")] = None,
    ) -> dict[str, Any]:
        """Call this right after saving files: it returns once every check that the changes
        made before this call trigger has a result covering them and no check is queued or
        running (as `devloop status --wait`), then answers as status does, with
        fresh: true. Needs a running daemon; without one it says so (use run)."""
        return await wait_fresh(project, timeout_s, checks)

    @tool("findings_for", read_only)
    def findings_for(
        path: Annotated[str, Field(
            description="a file of the project (or a directory: every file below it), "
            "relative to the project root or absolute")],
    ) -> dict[str, Any]:
        """Every check's findings for one file (the one you just edited), and whether a
        check is queued, running, or last ran before the file changed (then its results
        may be stale)."""
        return file_findings(project, path)

    @tool("run", ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False))
    async def run(
        files: Annotated[list[str] | None, Field(
            description="run only the checks these files trigger, on these files "
            "(relative to the project root); default: every check on the whole project"
        )] = None,
        timeout_s: Annotated[float, Field(
            description="give up (and stop the checks) after this many seconds")] = 300.0,
    ) -> dict[str, Any]:
        """Run the project's own configured checks once now, as `devloop run` does, and
        return their results (stored like the daemon's). Use it when no daemon is
        watching; with one running, wait_until_fresh is cheaper. Runs nothing else."""
        return await run_checks(project, files, timeout_s)

    return server


async def _serve(server: MCPServer[Any], project: Project) -> None:
    """Serve until stdin closes or a signal comes; either way, running checks are stopped.

    On end of input the SDK cancels the calls in flight, and a cancelled run stops its
    checks. On SIGTERM/SIGHUP/SIGINT (a client closing us down) the stdin reader is stuck
    in a thread that nothing can interrupt, so the runs are stopped here and the process
    leaves at once.
    """
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as sigs:
                async for signum in sigs:
                    for task in project.tasks:
                        task.cancel()
                    if project.tasks:
                        await asyncio.wait(project.tasks, timeout=CLEANUP_S)
                    sys.stderr.flush()
                    os._exit(128 + signum)

        tg.start_soon(on_signals)
        await server.run_stdio_async()
        tg.cancel_scope.cancel()


def _client_gone(exc: BaseException) -> bool:
    """Only broken pipes inside: the client closed our stdout (it went away)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError | ConnectionResetError)


def serve(root: Path) -> None:
    project = Project(root)
    server = build(project)
    use_pidfd_child_watcher()
    try:
        anyio.run(_serve, server, project, backend="asyncio")
    except BaseException as exc:
        if not _client_gone(exc):
            raise
