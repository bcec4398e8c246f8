"""Save a file, then ask for fresh results: `wait_until_fresh` over MCP beside `status --wait`.

    python3 bench/mcp_wait.py [--saves 20] [--output bench/RESULTS-mcp.md]

Needs the extra (`pip install -e '.[mcp]'`) and ruff on PATH. The project is a copy of
DevLoop's own source (real code) with two checks, ruff and python-syntax, and a real
`devloop watch --foreground` on it. One MCP session (the SDK's ClientSession, over stdio
to `devloop mcp`) stays open, as an assistant keeps it. Each save alternately breaks and
fixes one file (an undefined name, so ruff's verdict flips); the clock runs from just
before the write until the answer is back, and the answer must show the new verdict.
`status --wait` is timed the same way, as a process (its start-up included), and so is
a plain `devloop status`, the floor of any CLI answer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parent.parent
TARGET = "devloop/errors.py"
BROKEN = "\n\ndef _bench() -> int:\n    return undefined_name_for_the_bench  # type: ignore\n"


def make_project(root: Path) -> None:
    shutil.copytree(REPO / "devloop", root / "devloop",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ruff = shutil.which("ruff")
    if ruff is None:
        sys.exit("ruff is needed on PATH (pip install ruff)")
    (root / "devloop.toml").write_text(
        "[checks.ruff]\n"
        f"command = {json.dumps([ruff, 'check', '--output-format=json', '{files}'])}\n"
        'patterns = ["*.py"]\n'
        "debounce_ms = 0\n\n"
        "[checks.python-syntax]\n"
        f"command = {json.dumps([sys.executable, '-m', 'devloop.tools.pysyntax', '{files}'])}\n"
        'patterns = ["*.py"]\n'
        "debounce_ms = 0\n")


def save(root: Path, broken: bool, original: str) -> None:
    (root / TARGET).write_text(original + BROKEN if broken else original)


def ruff_failing(checks: list[dict[str, Any]]) -> bool:
    return next(c for c in checks if c["check"] == "ruff")["outcome"] == "fail"


def stats(xs: list[float]) -> str:
    ms = sorted(x * 1000 for x in xs)
    p90 = ms[max(0, int(len(ms) * 0.9) - 1)]
    return f"{statistics.median(ms):.0f} | {p90:.0f} | {ms[-1]:.0f}"


async def bench_mcp(root: Path, saves: int, original: str) -> tuple[list[float], int,
                                                                     list[float]]:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "devloop", "mcp", str(root)],
                                   env={"PYTHONPATH": str(REPO)})
    times, wrong, ruff_s = [], 0, []
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        await s.call_tool("wait_until_fresh", {"timeout_s": 60})
        for i in range(saves):
            broken = i % 2 == 0
            t0 = time.perf_counter()
            save(root, broken, original)
            res = await s.call_tool("wait_until_fresh", {"timeout_s": 60})
            times.append(time.perf_counter() - t0)
            ans = res.structured_content or {}
            if res.is_error or not ans.get("fresh") or ruff_failing(ans["checks"]) != broken:
                wrong += 1
            else:
                ruff_s.append(next(c for c in ans["checks"] if c["check"] == "ruff")["duration_s"])
            await anyio.sleep(0.3)
    return times, wrong, ruff_s


def bench_cli(root: Path, saves: int, original: str, wait: bool) -> tuple[list[float], int]:
    times, wrong = [], 0
    args = [sys.executable, "-m", "devloop", "status", str(root), "--json"]
    if wait:
        args += ["--wait", "--timeout", "60"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for i in range(saves):
        broken = i % 2 == 0
        t0 = time.perf_counter()
        if wait:
            save(root, broken, original)
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        times.append(time.perf_counter() - t0)
        if wait and (out.returncode not in (0, 1)
                     or ruff_failing(json.loads(out.stdout)) != broken):
            wrong += 1
        time.sleep(0.3)
    return times, wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saves", type=int, default=20)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "RESULTS-mcp.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="devloop-mcp-bench-") as tmp:
        root = Path(tmp) / "proj"
        make_project(root)
        original = (root / TARGET).read_text()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "devloop", "watch", "--foreground", str(root)],
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            # ready: `status --wait` answers once the start-up runs are in
            deadline = time.monotonic() + 60
            while subprocess.run([sys.executable, "-m", "devloop", "status", str(root),
                                  "--wait", "--timeout", "30"], capture_output=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}
                                 ).returncode not in (0, 1):
                if time.monotonic() > deadline:
                    sys.exit("the daemon did not come up")
                time.sleep(0.2)
            mcp_t, mcp_wrong, ruff_s = anyio.run(bench_mcp, root, args.saves, original)
            cli_t, cli_wrong = bench_cli(root, args.saves, original, wait=True)
            floor_t, _ = bench_cli(root, args.saves, original, wait=False)
        finally:
            daemon.terminate()
            daemon.wait(30)
    files = sum(1 for _ in (REPO / "devloop").rglob("*.py"))
    lines = [
        "# save → fresh results: `wait_until_fresh` (MCP) beside `status --wait`",
        "",
        f"`python3 bench/mcp_wait.py --saves {args.saves}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"project: DevLoop's own source ({files} files), checks ruff and python-syntax, "
        f"debounce 0; each save flips ruff's verdict and every answer must show it.",
        "",
        "| from the save until the answer is back | median ms | p90 ms | max ms | wrong |",
        "|---|---|---|---|---|",
        f"| `wait_until_fresh` over an open MCP session | {stats(mcp_t)} | {mcp_wrong} |",
        f"| `devloop status --wait --json` (a new process) | {stats(cli_t)} | {cli_wrong} |",
        f"| `devloop status --json` (no wait: the start-up floor) | {stats(floor_t)} | - |",
        "",
        f"ruff's own run on the saved file, as the answers report it: median "
        f"{statistics.median(ruff_s) * 1000:.0f} ms." if ruff_s else "",
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
