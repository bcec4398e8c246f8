"""`devloop mcp`: driven by real MCP clients over stdio (the SDK's ClientSession, the
MCP Inspector's CLI), a real daemon, and real processes killed under it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import DaemonProc, alive, wait_for

mcp = pytest.importorskip("mcp", reason="the optional extra mcp is not installed")
import anyio  # noqa: E402  (installed with mcp)
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NODE_BIN = REPO / ".ci" / "node" / "node_modules" / ".bin"  # installed by .ci/run (npm)
INSPECTOR = NODE_BIN / "mcp-inspector"
TOOLS = {"status", "wait_until_fresh", "findings_for", "run"}
# a check that notes its PID, then sleeps: for calls cut short under it
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"


def server_params(root: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "devloop", "mcp", str(root)],
                                 env={"PYTHONPATH": str(REPO)})


@asynccontextmanager
async def session(root: Path) -> AsyncIterator[ClientSession]:
    async with stdio_client(server_params(root)) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


def drive(root: Path, body: Callable[[ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with session(root) as s:
            with anyio.fail_after(120):  # only keeps a broken test from hanging
                await body(s)
    try:
        anyio.run(main)
    except BaseExceptionGroup as group:  # the SDK's task groups wrap the test's own error
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        raise leaf from None


async def call(s: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    res = await s.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    return res.structured_content


async def call_error(s: ClientSession, tool: str, **args: Any) -> str:
    res = await s.call_tool(tool, args)
    assert res.is_error, res.structured_content
    text: str = res.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text
    return text


def write_config(root: Path, body: str) -> None:
    (root / "devloop.toml").write_text(textwrap.dedent(body))


def syntax_check(root: Path) -> None:
    """The one check: Python syntax (the defaults would also pick up ruff, mypy, pytest)."""
    write_config(root, f"""
        [checks.python-syntax]
        command = {json.dumps([sys.executable, "-m", "devloop.tools.pysyntax", "{files}"])}
        patterns = ["*.py"]
        debounce_ms = 0
        """)


def sleeper_project(root: Path, pidfile: Path) -> None:
    (root / "a.txt").write_text("x\n")
    write_config(root, f"""
        [checks.slow]
        command = {json.dumps([sys.executable, "-c", SLEEPER, str(pidfile)])}
        patterns = ["*.txt"]
        run_on_start = false
        """)


def test_tools_listed_with_descriptions(project: Path) -> None:
    async def body(s: ClientSession) -> None:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == TOOLS
        for t in tools.values():
            assert t.description and len(t.description) > 40
            assert "    " not in t.description  # dedented for the model
        assert tools["status"].annotations and tools["status"].annotations.read_only_hint
        assert tools["run"].annotations and not tools["run"].annotations.read_only_hint
    drive(project, body)


def test_run_then_status_and_findings_for(project: Path) -> None:
    (project / "bad.py").write_text("x = 1\ndef f(:\n    pass\n")
    (project / "good.py").write_text("y = 2\n")
    syntax_check(project)

    async def body(s: ClientSession) -> None:
        empty = await call(s, "status")
        assert empty["checks"] == [] and "no check has run" in empty["summary"]
        assert empty["daemon"]["running"] is False

        ran = await call(s, "run")
        assert ran["summary"].startswith("ran now, in ")
        assert ran["summary"].endswith("s: 1 check, 1 failing (python-syntax)")
        (check,) = ran["checks"]
        assert check["findings"] == ["bad.py:2:7: error: SyntaxError: invalid syntax"]

        st = await call(s, "status")
        assert st["checks"][0]["findings"] == check["findings"]
        assert (await call(s, "status", checks=["python-syntax"]))["checks"][0]["outcome"] == "fail"

        mine = await call(s, "findings_for", path="bad.py")
        assert mine["findings"] == ["python-syntax: bad.py:2:7: error: SyntaxError: invalid syntax"]
        assert mine["summary"] == "bad.py: 1 finding"
        assert mine["daemon"] == {"running": False, "pid": None}
        same = await call(s, "findings_for", path=str(project / "bad.py"))
        assert same["findings"] == mine["findings"]
        assert (await call(s, "findings_for", path="good.py"))["findings"] == []
        assert "is the project root: call status" in await call_error(
            s, "findings_for", path=str(project))

        (project / "bad.py").write_text("x = 1\n")
        later = await call(s, "findings_for", path="bad.py")
        assert "may be stale (python-syntax last ran before it changed)" in later["summary"]
        fixed = await call(s, "run", files=["bad.py"])
        assert fixed["summary"].endswith("s: 1 check, 0 failing")
        assert (await call(s, "findings_for", path="bad.py"))["findings"] == []
    drive(project, body)


def test_findings_capped_summary_first(project: Path) -> None:
    (project / "pkg").mkdir()
    for i in range(25):
        (project / "pkg" / f"m{i:02}.py").write_text("def f(:\n")
    syntax_check(project)

    async def body(s: ClientSession) -> None:
        await call(s, "run")
        st = await call(s, "status")
        assert next(iter(st)) == "summary"
        (check,) = st["checks"]
        assert check["findings_total"] == 25
        assert len(check["findings"]) == 10 and check["more_findings"] == 15
        assert len((await call(s, "status", max_findings=3))["checks"][0]["findings"]) == 3
        every = (await call(s, "status", all_findings=True))["checks"][0]
        assert len(every["findings"]) == 25 and "more_findings" not in every
        below = await call(s, "findings_for", path="pkg")
        assert below["summary"] == "pkg/: 25 findings" and len(below["findings"]) == 25
    drive(project, body)


def test_bad_input_is_a_tool_error_and_the_server_goes_on(project: Path, tmp_path: Path) -> None:
    (project / "a.py").write_text("x = 1\n")
    (tmp_path / "outside.py").write_text("x = 1\n")
    syntax_check(project)
    os.symlink(tmp_path / "outside.py", project / "link.py")

    async def body(s: ClientSession) -> None:
        await call(s, "run")
        for path in ("/etc/passwd", "../outside.py", str(tmp_path / "outside.py")):
            assert "not a file inside the project" in await call_error(
                s, "findings_for", path=path)
        assert "leads out of the project" in await call_error(s, "findings_for", path="link.py")
        assert "path must be" in await call_error(s, "findings_for", path="")
        assert "not a file inside the project" in await call_error(
            s, "run", files=["../outside.py"])
        assert "timeout_s must be 0 or more" in await call_error(s, "run", timeout_s=-1)
        assert "timeout_s must be 0 or more" in await call_error(
            s, "wait_until_fresh", timeout_s=-0.5)
        assert "unknown check 'nope'" in await call_error(s, "status", checks=["nope"])
        assert "max_findings must be 0 or more" in await call_error(s, "status", max_findings=-1)
        await call_error(s, "status", max_findings="many")  # schema validation, not a crash
        assert (await call(s, "status"))["checks"][0]["outcome"] == "pass"  # still serving
    drive(project, body)


def test_bad_config_is_a_tool_error(project: Path) -> None:
    (project / "a.py").write_text("x = 1\n")
    (project / "devloop.toml").write_text("[checks.x]\ncommand = 3\n")

    async def body(s: ClientSession) -> None:
        assert "devloop.toml" in await call_error(s, "run")
    drive(project, body)


def test_run_timeout_stops_the_checks(project: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "check.pid"
    sleeper_project(project, pidfile)

    async def body(s: ClientSession) -> None:
        msg = await call_error(s, "run", timeout_s=2)
        assert "did not finish within timeout_s=2" in msg
        pid = int(pidfile.read_text())
        assert not alive(pid)
    drive(project, body)


class RawServer:
    """`devloop mcp` on pipes of the test's own, spoken to in raw JSON-RPC lines: a client
    that can close stdin, signal the server or cancel a call at a chosen moment."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devloop", "mcp", str(root)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}})
        assert self.receive()["id"] == 0
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def call(self, request_id: int, tool: str, **args: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                   "params": {"name": tool, "arguments": args}})

    def close_stdin_and_wait(self) -> None:
        """End of input: the server exits 0, without a traceback."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0
        assert b"Traceback" not in self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Path], RawServer]]:
    started: list[RawServer] = []

    def start(root: Path) -> RawServer:
        started.append(RawServer(root))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def _mcp_processes(root: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"devloop mcp {root}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.parametrize("how", ["kill-client", "close-stdin", "sigterm-server"])
def test_client_gone_mid_call_leaves_no_process(
        project: Path, tmp_path: Path, raw_server: Callable[[Path], RawServer], how: str) -> None:
    """A run is in flight when the client goes away: the server and the check both go."""
    pidfile = tmp_path / "check.pid"
    sleeper_project(project, pidfile)
    if how == "kill-client":  # the real SDK client in a process of its own, SIGKILLed
        script = tmp_path / "client.py"
        script.write_text(textwrap.dedent(f"""
            import anyio, sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_mcp import session
            from pathlib import Path
            async def main():
                async with session(Path({str(project)!r})) as s:
                    await s.call_tool("run", {{"timeout_s": 100}})
            anyio.run(main)
            """))
        client = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            wait_for(pidfile.exists, 60, "the check to start")
            (server_pid,) = _mcp_processes(project)
        finally:
            client.kill()
            client.wait()
    else:
        server = raw_server(project)
        server.call(1, "run", timeout_s=100)
        wait_for(pidfile.exists, 60, "the check to start")
        server_pid = server.proc.pid
        if how == "close-stdin":
            server.close_stdin_and_wait()
        else:
            server.proc.send_signal(signal.SIGTERM)
    check_pid = int(wait_for(lambda: pidfile.read_text(), 10, "the check's PID"))
    wait_for(lambda: not alive(server_pid), 30, "the server to exit")
    wait_for(lambda: not alive(check_pid), 10, "the check to be stopped")


def test_cancelled_run_stops_its_checks_and_the_server_goes_on(
        project: Path, tmp_path: Path, raw_server: Callable[[Path], RawServer]) -> None:
    """notifications/cancelled for a run in flight: its check goes, the server stays."""
    pidfile = tmp_path / "check.pid"
    sleeper_project(project, pidfile)
    server = raw_server(project)
    server.call(1, "run", timeout_s=100)
    check_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60,
                             "the check to start"))
    server.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                 "params": {"requestId": 1, "reason": "the user changed their mind"}})
    wait_for(lambda: not alive(check_pid), 10, "the check to be stopped")
    server.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert server.receive() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    server.close_stdin_and_wait()


def _holds_pidfd(pid: int) -> bool:
    """results.wait_fresh sleeps on a pidfd of the daemon."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd) == "anon_inode:[pidfd]":
                return True
    return False


def test_end_of_input_during_wait_until_fresh(
        project: Path, tmp_path: Path, start_daemon: Callable[..., DaemonProc],
        raw_server: Callable[[Path], RawServer]) -> None:
    """The client goes while wait_until_fresh waits on a slow check: the server exits now,
    not when the wait would have timed out."""
    pidfile = tmp_path / "check.pid"
    sleeper_project(project, pidfile)
    start_daemon(project)
    (project / "a.txt").write_text("y\n")
    wait_for(pidfile.exists, 60, "the daemon's check to start")
    server = raw_server(project)
    server.call(1, "wait_until_fresh", timeout_s=100)
    wait_for(lambda: _holds_pidfd(server.proc.pid), 30, "the wait to watch the daemon's pidfd")
    assert server.proc.poll() is None  # waiting: the check sleeps for 120 s
    server.close_stdin_and_wait()


def test_wait_until_fresh_times_out_saying_what_it_waits_for(
        project: Path, tmp_path: Path, start_daemon: Callable[..., DaemonProc]) -> None:
    pidfile = tmp_path / "check.pid"
    sleeper_project(project, pidfile)
    start_daemon(project)
    (project / "a.txt").write_text("y\n")
    wait_for(pidfile.exists, 60, "the daemon's check to start")

    async def body(s: ClientSession) -> None:
        late = await call(s, "wait_until_fresh", timeout_s=1)
        assert late["fresh"] is False
        assert late["summary"].startswith("NOT fresh: timed out after 1s, still waiting for slow")
        assert late["checks"] == [{"check": "slow", "state": "running", "outcome": None,
                                   "stale": False, "findings_total": 0, "findings": []}]
        assert "unknown check 'nope'" in await call_error(
            s, "wait_until_fresh", timeout_s=1, checks=["nope"])
    drive(project, body)


def test_daemon_save_then_wait_until_fresh(project: Path,
                                           start_daemon: Callable[..., DaemonProc]) -> None:
    """The assistant's loop: save a file, wait_until_fresh, read the new failure."""
    (project / "a.py").write_text("x = 1\n")
    syntax_check(project)
    daemon = start_daemon(project)

    async def body(s: ClientSession) -> None:
        first = await call(s, "wait_until_fresh", timeout_s=60)
        assert first["fresh"] is True, first
        assert first["daemon"] == {"running": True, "pid": daemon.pid}
        assert first["summary"].startswith("fresh after ")
        assert "1 check, 0 failing" in first["summary"]

        (project / "a.py").write_text("x = 1\n\nif x:\nprint(x)\n")
        fresh = await call(s, "wait_until_fresh", timeout_s=60)
        assert fresh["fresh"] is True, fresh
        (check,) = fresh["checks"]
        assert check["outcome"] == "fail" and check["stale"] is False, fresh
        assert check["findings"][0].startswith("a.py:4:")
        assert "expected an indented block" in check["findings"][0]
        assert "python-syntax" in fresh["summary"]
        st = await call(s, "status")
        assert st["daemon"]["running"] is True and str(daemon.pid) in st["summary"]
        only = await call(s, "wait_until_fresh", timeout_s=60, checks=["python-syntax"])
        assert only["fresh"] is True and [c["check"] for c in only["checks"]] == ["python-syntax"]
    drive(project, body)


def test_wait_until_fresh_without_a_daemon_says_so(project: Path) -> None:
    (project / "a.py").write_text("x = 1\n")
    syntax_check(project)

    async def body(s: ClientSession) -> None:
        await call(s, "run")
        msg = await call_error(s, "wait_until_fresh", timeout_s=1)
        assert "no devloop daemon" in msg and "run" in msg
    drive(project, body)


def test_daemon_never_loads_the_mcp_sdk(project: Path,
                                        start_daemon: Callable[..., DaemonProc]) -> None:
    """The daemon's own memory does not grow: neither the SDK nor pydantic is mapped."""
    (project / "a.py").write_text("x = 1\n")
    daemon = start_daemon(project)
    maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    assert "pydantic_core" not in maps
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, devloop.cli; devloop.cli.build_parser(); "
         "import devloop.daemon, devloop.commands.watch; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'pydantic')))"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"


def _inspector(root: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(INSPECTOR), "--cli", sys.executable, "-m", "devloop", "mcp", str(root), *args],
        capture_output=True, text=True, timeout=300,  # only against a hang
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(root.parent),
             "PATH": f"{NODE_BIN}:{os.environ['PATH']}"})  # its Node.js 22 first
    assert out.returncode == code, out.stderr
    return out


@pytest.mark.skipif(not INSPECTOR.exists() and not os.environ.get("CI"),
                    reason="the MCP Inspector is installed by .ci/run (npm)")
def test_mcp_inspector_cli_lists_and_calls_every_tool(
        project: Path, start_daemon: Callable[..., DaemonProc]) -> None:
    """A third-party client: the MCP Inspector's CLI mode, from npm, with a real daemon."""
    (project / "bad.py").write_text("def f(:\n")
    syntax_check(project)
    # --strict: the Inspector's schema portability check fails (exit 6) on any error
    listed = json.loads(_inspector(project, "--method", "tools/list", "--strict").stdout)
    assert {t["name"] for t in listed["tools"]} == TOOLS

    def tool(name: str, *args: str) -> Any:
        out = _inspector(project, "--method", "tools/call", "--tool-name", name,
                         *(a for arg in args for a in ("--tool-arg", arg)))
        res = json.loads(out.stdout)
        assert res["isError"] is False and res["content"][0]["type"] == "text"
        return res["structuredContent"]

    ran = tool("run", 'files=["bad.py"]', "timeout_s=60")
    assert ran["checks"][0]["findings"] == ["bad.py:1:7: error: SyntaxError: invalid syntax"]
    assert tool("status")["summary"].startswith(
        "1 check, 1 failing (python-syntax); no daemon is running")
    assert tool("findings_for", "path=bad.py")["findings"] == [
        "python-syntax: bad.py:1:7: error: SyntaxError: invalid syntax"]

    daemon = start_daemon(project)
    (project / "bad.py").write_text("def f():\n    return 1\n")
    waited = tool("wait_until_fresh", "timeout_s=60")
    assert waited["fresh"] is True and waited["daemon"]["pid"] == daemon.pid
    assert "1 check, 0 failing" in waited["summary"]

    outside = _inspector(project, "--method", "tools/call", "--tool-name", "findings_for",
                         "--tool-arg", "path=/etc/passwd", code=5)  # its exit code: isError
    assert "/etc/passwd is not a file inside the project" in outside.stdout + outside.stderr


def test_without_the_extra_one_clear_line(project: Path, tmp_path: Path) -> None:
    """No MCP SDK installed: exit 69 and what to install, no traceback."""
    blocker = tmp_path / "nomcp"
    blocker.mkdir()
    (blocker / "mcp").mkdir()
    (blocker / "mcp" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    r = subprocess.run([sys.executable, "-m", "devloop", "mcp", str(project)],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                       env={**os.environ, "PYTHONPATH": f"{blocker}:{REPO}"})
    assert r.returncode == 69
    assert r.stderr.strip().splitlines() == [
        "devloop: error: devloop mcp needs the MCP SDK (mcp is missing): "
        "install DevLoop with its extra: pip install '.[mcp]' in its checkout"]
