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


def started(project: Path, check: str) -> float:
    [entry] = results.snapshot(project, [check])["checks"]
    return float(entry["started"])


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
                figures = []
                for i in range(args.runs):
                    results.wait_fresh(project, 300)  # nothing in flight before the save
                    saved = time.time()
                    with target.open("a") as f:
                        f.write(f"# devloop bench {check} {i}\n")
                    done = wait(project, check)
                    if started(project, check) < saved:
                        raise SystemExit(f"{check}: the result returned predates the save")
                    figures.append(done - saved)
                figures.sort()
                rows.append((check, way, statistics.median(figures) * 1000,
                             figures[-1] * 1000, len(figures)))
                print(f"{check:7} {way:22} median {rows[-1][2]:8.1f} ms  max "
                      f"{rows[-1][3]:8.1f} ms", flush=True)
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
        "src/click/utils.py) until the call returned with that check's result covering it.",
        "",
        "| check | waited with | median (ms) | max (ms) | saves |",
        "|---|---|---:|---:|---:|",
        *(f"| {c} | {w} | {m:.1f} | {x:.1f} | {n} |" for c, w, m, x, n in rows),
        "",
    ]
    (BENCH_DIR / "RESULTS-wait.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
