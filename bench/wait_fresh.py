#!/usr/bin/env python3
"""Save -> `devloop status --wait CHECK` returns with a result covering the save, per check,
on a real project (click 8.1.7's sdist, fetched with pip once and kept in the work dir).

    python3 bench/wait_fresh.py [--runs 10] [--workdir /var/tmp/devloop-bench-wait]

Uses the devloop, ruff and pytest of the Python running it. Checks (all `*.py`, default
debounce): `syntax` (py_compile on the saved files), `ruff` (on the saved files), `pytest`
(tests/test_utils.py of click). Each round: wait until every check is idle, take the time,
append a comment to src/click/utils.py, then call `devloop status --wait CHECK` as a child
process (what a person or an assistant runs: its Python start-up is included) and, in
another round, `devloop.results.wait_fresh` in this process (what `devloop mcp` calls).
A round counts only when the result returned started after the save. Writes the table to
stdout and to bench/RESULTS-wait.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from devloop import results

BENCH_DIR = Path(__file__).resolve().parent
CHECKS = ("syntax", "ruff", "pytest")


def fetch(workdir: Path) -> Path:
    sdist = workdir / "click-8.1.7.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                        "--no-deps", "click==8.1.7", "-d", str(workdir)], check=True)
    project = workdir / "click-8.1.7"
    if project.exists():
        subprocess.run(["rm", "-rf", str(project)], check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data")
    return project


def configure(project: Path) -> None:
    bindir = Path(sys.executable).parent
    checks = {
        "syntax": [sys.executable, "-m", "py_compile", "{files}"],
        "ruff": [str(bindir / "ruff"), "check", "--output-format=json", "--no-cache",
                 "{files}"],
        "pytest": ["env", "PYTHONPATH=src", sys.executable, "-m", "pytest", "-q",
                   "-p", "no:cacheprovider", "tests/test_utils.py"],
    }
    (project / "devloop.toml").write_text("".join(
        f'[checks.{name}]\ncommand = {json.dumps(cmd)}\npatterns = ["*.py"]\n\n'
        for name, cmd in checks.items()))


def status_wait(project: Path, check: str) -> float:
    """`devloop status --wait CHECK` as a child; returns when it exits."""
    r = subprocess.run([sys.executable, "-m", "devloop", "status", str(project), check,
                        "--wait", "--timeout", "300"], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"status --wait exited {r.returncode}: {r.stderr.strip()}")
    return time.time()


def library_wait(project: Path, check: str) -> float:
    snap = results.wait_fresh(project, 300, [check])
    if not snap["fresh"]:
        raise SystemExit("wait_fresh timed out")
    return time.time()


def last_run(project: Path, check: str) -> tuple[float, float]:
    """(start, duration) of the check's last run."""
    [entry] = results.snapshot(project, [check])["checks"]
    return float(entry["started"]), float(entry["duration"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="saves per check and way (default 10)")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/devloop-bench-wait"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    project = fetch(args.workdir)
    configure(project)
    daemon = subprocess.Popen([sys.executable, "-m", "devloop", "watch", "--foreground",
                               str(project)], stdout=subprocess.DEVNULL,
                              stderr=(args.workdir / "daemon.log").open("wb"))
    target = project / "src" / "click" / "utils.py"
    rows = []
    try:
        time.sleep(1)
        results.wait_fresh(project, 300)  # the start-up runs: warm caches
        for check in CHECKS:
            for way, wait in (("status --wait (CLI)", status_wait),
                              ("wait_fresh (library)", library_wait)):
                figures, runs, overhead = [], [], []
                for i in range(args.runs):
                    results.wait_fresh(project, 300)  # nothing in flight before the save
                    saved = time.time()
                    with target.open("a") as f:
                        f.write(f"# devloop bench {check} {i}\n")
                    done = wait(project, check)
                    begun, duration = last_run(project, check)
                    if begun < saved:
                        raise SystemExit(f"{check}: the result returned predates the save")
                    figures.append(done - saved)
                    runs.append(duration)
                    overhead.append(done - saved - duration)
                ms = [1000 * statistics.median(figures), 1000 * max(figures),
                      1000 * statistics.median(runs), 1000 * statistics.median(overhead),
                      1000 * max(overhead)]
                rows.append((check, way, *ms, len(figures)))
                print(f"{check:7} {way:22} " + " ".join(f"{m:8.1f}" for m in ms), flush=True)
    finally:
        daemon.terminate()
        daemon.wait(30)
    lines = [
        "# Save -> fresh result, per check (`bench/wait_fresh.py`)",
        "",
        f"Run `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, project click 8.1.7 (sdist), "
        "checks with the default debounce; the machine was shared with other work, so the "
        "figures are an upper bound. Time from the save (an appended comment in "
        "src/click/utils.py) until the call returned with that check's result covering it. "
        f"Load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        f" on {os.cpu_count()} CPUs.",
        "",
        "| check | waited with | save -> returned, median (ms) | max (ms) "
        "| the run itself, median (ms) | the rest, median (ms) | the rest, max (ms) | saves |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {c} | {w} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {n} |"
          for c, w, *vals, n in rows),
        "",
        "The rest = save -> returned minus the check's own run: the 100 ms debounce, the "
        "daemon reading the save, publishing the state, the waiter waking, and for the CLI "
        "its Python start-up.",
        "",
    ]
    (BENCH_DIR / "RESULTS-wait.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
