"""`devloop mcp DIR`: the project's check results as Model Context Protocol tools, over stdio.

Only `devloop mcp` imports this module (and with it the MCP SDK, the optional extra
`devloop[mcp]`): the daemon never loads it. Every answer is small on purpose: a model
reads it whole, so the summary comes first and findings are capped.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from devloop import __version__, config, lockholder, statedir
from devloop.commands.run import _run_once
from devloop.commands.status import FAILING
from devloop.core.daemon_health import STATE_DIR
from devloop.daemon import use_pidfd_child_watcher
from devloop.errors import DevloopError
from devloop.findings import Finding
from devloop.store import DB_NAME, CheckState, Store

DEFAULT_FINDINGS = 10  # per check, as `devloop status` shows them
MAX_FINDINGS_FOR = 50  # of one file, all checks together
MAX_MESSAGE = 300  # characters of one finding's message
TAIL_LINES = 5  # output lines shown for a check that failed without findings
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
    """One project directory: where its results are and whether a daemon watches it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / STATE_DIR
        self.run_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()  # runs in flight, stopped on a signal

    def daemon(self) -> dict[str, Any]:
        """Whether a daemon holds the project's lock: the kernel's word, not a PID file."""
        holders = lockholder.flock_holders(self.state_dir / statedir.LOCK_NAME)
        if holders:
            return {"running": True, "pid": statedir.holder_pid(self.state_dir) or min(holders)}
        return {"running": False, "pid": None}

    def states(self) -> list[CheckState]:
        """The last result of every check (empty when nothing has run yet)."""
        if not (self.state_dir / DB_NAME).exists():
            return []
        try:
            store = Store.open(self.state_dir, readonly=True)
            try:
                return store.latest()
            finally:
                store.close()
        except sqlite3.Error as exc:
            raise ToolError(f"cannot read the results in {self.state_dir / DB_NAME}: {exc}"
                            ) from None

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
        if rel == "." or rel.startswith(".."):
            real = os.path.relpath(os.path.realpath(full), self.root)
            if real == "." or real.startswith(".."):
                raise ToolError(f"{path} is not a file inside the project {self.root}")
            rel = real
        return rel


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _finding(f: Finding, check: str | None = None) -> str:
    """One line, as `devloop status` prints it: `file:line:col: severity: message [code]`."""
    col = f":{f.column}" if f.column is not None else ""
    code = f" [{f.code}]" if f.code else ""
    msg = f.message if len(f.message) <= MAX_MESSAGE else f.message[:MAX_MESSAGE] + "…"
    who = f"{check}: " if check else ""
    return f"{who}{f.file}:{f.line}{col}: {f.severity}: {msg}{code}"


def _check_entry(st: CheckState, cap: int | None) -> dict[str, Any]:
    r = st.run
    entry: dict[str, Any] = {
        "check": r.check,
        "outcome": r.outcome,
        "ran": _ago(r.started),
        "duration_s": round(r.duration, 2),
        "scope": ("whole project" if r.files is None or r.covers_all
                  else f"{len(r.files)} file{'s' * (len(r.files) != 1)}"),
        "findings_total": len(st.findings),
    }
    shown = st.findings if cap is None else st.findings[:cap]
    entry["findings"] = [_finding(f) for f in shown]
    if len(shown) < len(st.findings):
        entry["more_findings"] = len(st.findings) - len(shown)
    if r.outcome in ("error", "timeout") or (r.outcome == "fail" and not st.findings):
        entry["output_tail"] = [line[:MAX_MESSAGE]
                                for line in r.output.strip().splitlines()[-TAIL_LINES:]]
    return entry


def _summary(states: Sequence[CheckState], daemon: dict[str, Any]) -> str:
    failing = [st.run.check for st in states if st.run.outcome in FAILING]
    head = f"{len(states)} check{'s' * (len(states) != 1)}, {len(failing)} failing"
    if failing:
        head += f" ({', '.join(failing)})"
    watch = (f"a daemon is watching (PID {daemon['pid']})" if daemon["running"]
             else "no daemon is running: results may be stale (the run tool checks now)")
    return f"{head}; {watch}"


def status_result(project: Project, checks: list[str] | None, all_findings: bool,
           max_findings: int) -> dict[str, Any]:
    if max_findings < 0:
        raise ToolError("max_findings must be 0 or more")
    daemon = project.daemon()
    states = project.states()
    if checks:
        known = {st.run.check for st in states}
        unknown = [c for c in checks if c not in known]
        if unknown:
            raise ToolError(f"unknown check {', '.join(map(repr, unknown))}; the checks with "
                            f"results are: {', '.join(sorted(known)) or 'none yet'}")
        states = [st for st in states if st.run.check in checks]
    if not states:
        return {"summary": "no results yet: no check has run. "
                + ("The daemon runs them on start and on every save."
                   if daemon["running"] else "No daemon is running: call run."),
                "daemon": daemon, "checks": []}
    cap = None if all_findings else max_findings
    return {"summary": _summary(states, daemon), "daemon": daemon,
            "checks": [_check_entry(st, cap) for st in states]}


def file_findings(project: Project, path: str) -> dict[str, Any]:
    rel = project.relative(path)
    states = project.states()
    try:
        mtime: float | None = os.stat(project.root / rel).st_mtime
    except OSError:
        mtime = None
    lines: list[str] = []
    stale: list[str] = []
    for st in states:
        lines.extend(_finding(f, st.run.check) for f in st.findings if f.file == rel)
        if mtime is not None and mtime > st.run.started:
            stale.append(st.run.check)
    checks = sorted({st.run.check for st in states})
    summary = f"{rel}: {len(lines)} finding{'s' * (len(lines) != 1)}"
    if mtime is None:
        summary += " (no such file now)"
    if stale:
        summary += (f"; changed after the last run of {', '.join(stale)}: call wait_until_fresh"
                    " (or run) for results that cover it")
    result: dict[str, Any] = {"summary": summary, "path": rel, "checks": checks,
                              "findings": lines[:MAX_FINDINGS_FOR]}
    if len(lines) > MAX_FINDINGS_FOR:
        result["more_findings"] = len(lines) - MAX_FINDINGS_FOR
    return result


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
        results = await _bounded(task, timeout_s)
    if results is None:
        raise ToolError(f"the checks did not finish within timeout_s={timeout_s:g}: they were "
                        "stopped. Call run again with a larger timeout_s, or on fewer files.")
    if not results:
        what = "the given files trigger no check" if rel else "no check has any file to check"
        return {"summary": f"nothing ran: {what}", "checks": []}
    daemon = project.daemon()
    out = status_of(results, daemon, DEFAULT_FINDINGS)
    out["summary"] += f"; ran in {time.monotonic() - t0:.1f}s"
    return out


def status_of(states: Sequence[CheckState], daemon: dict[str, Any], cap: int
              ) -> dict[str, Any]:
    return {"summary": _summary(states, daemon), "daemon": daemon,
            "checks": [_check_entry(st, cap) for st in states]}


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

    @tool("findings_for", read_only)
    def findings_for(
        path: Annotated[str, Field(
            description="a file of the project, relative to its root or absolute")],
    ) -> dict[str, Any]:
        """Every check's findings for one file (the one you just edited), and whether the
        file changed after a check's last run (then its results may be stale)."""
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
