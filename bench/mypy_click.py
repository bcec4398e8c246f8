"""Save -> fresh mypy result on a real project (click 8.1.7): DevLoop's dmypy server vs plain mypy.

    python3 bench/mypy_click.py [--work DIR] [--edits N]

Fetches the click 8.1.7 sdist (`pip download --no-binary :all: --no-deps`), unpacks it and
gives it a `.venv` with mypy (kept in DIR between runs). Then:
- DevLoop: `devloop watch --foreground` with one check, `command = [".venv/bin/mypy"]`
  (click's setup.cfg [mypy] names `files = src/click, tests/typing`), default debounce.
  After the first (cold) result and WARMUP edits, each edit flips the return type of
  `make_default_short_help` in src/click/utils.py between `str` and `bytes`, which breaks
  src/click/core.py as well; the time from the write to the moment the results database
  holds a mypy run started after it (polled every 10 ms) is one "save -> fresh" sample.
- plain mypy: the same edits, each followed by `.venv/bin/mypy` (incremental, its cache
  warm) and by `.venv/bin/mypy --no-incremental`, timed from the write to its exit.
Prints the medians and writes them to bench/RESULTS-mypy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
UTILS = "src/click/utils.py"
GOOD = "def make_default_short_help(help: str, max_length: int = 45) -> str:"
# bytes, not int: another size, so plain mypy's cache (whole-second mtimes) sees the change
BAD = "def make_default_short_help(help: str, max_length: int = 45) -> bytes:"
TOML = """\
[checks.mypy]
command = [".venv/bin/mypy"]
patterns = ["*.py", "*.pyi", "setup.cfg"]
"""


def setup(work: Path) -> Path:
    root = work / "click-8.1.7"
    if not (root / ".venv/bin/dmypy").exists():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                        "--no-deps", "click==8.1.7", "-d", str(work)], check=True)
        with tarfile.open(work / "click-8.1.7.tar.gz") as tar:
            tar.extractall(work, filter="data")
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(root / ".venv")], check=True)
        subprocess.run([str(root / ".venv/bin/pip"), "install", "-q", "mypy"], check=True)
    (root / "devloop.toml").write_text(TOML)
    return root


def set_version(root: Path, bad: bool) -> None:
    path = root / UTILS
    text = path.read_text()
    path.write_text(text.replace(GOOD, BAD) if bad else text.replace(BAD, GOOD))


class Results:
    """The daemon's results database, read-only, one connection for the whole bench."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.conn: sqlite3.Connection | None = None

    def latest(self) -> tuple[float, str, list[tuple[str, int]]] | None:
        try:
            if self.conn is None:
                if not self.db.exists():
                    return None
                self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
            with self.conn:  # one read transaction: the run and its findings agree
                row = self.conn.execute(
                    "SELECT id, started, outcome FROM runs WHERE check_name = 'mypy'"
                    " ORDER BY id DESC LIMIT 1").fetchone()
                if row is None:
                    return None
                found = self.conn.execute(
                    "SELECT file, line FROM findings WHERE check_name = 'mypy'"
                    " ORDER BY file, line").fetchall()
        except sqlite3.Error:
            return None
        return row[1], row[2], [(f, ln) for f, ln in found]

    def wait_fresh(self, after: float, timeout: float = 120.0
                   ) -> tuple[float, str, list[tuple[str, int]]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.latest()
            if got is not None and got[0] > after:
                return got
            time.sleep(0.01)
        raise SystemExit("no fresh mypy result within the timeout")


def bench_devloop(root: Path, edits: int, warmup: int) -> dict[str, object]:
    results = Results(root / ".devloop/devloop.db")
    python = REPO / ".venv/bin/python"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    log = open(root.parent / "devloop.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([str(python if python.exists() else sys.executable), "-m",
                               "devloop", "watch", "--foreground", str(root)], env=env,
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        t0 = time.time()
        results.wait_fresh(t0)
        cold = time.time() - t0
        samples: list[float] = []
        broken_files: set[str] = set()
        for i in range(warmup + edits):
            bad = i % 2 == 0
            time.sleep(0.3)  # the previous run's tail is over
            t = time.time()
            set_version(root, bad)
            _, outcome, found = results.wait_fresh(t)
            took = time.time() - t
            core = {ln for f, ln in found if f == "src/click/core.py"}
            if bad:  # the result is that of this version: core.py broken too, else not
                broken_files = {f for f, _ in found if f != UTILS}
                assert outcome == "fail" and 1335 in core, found
            else:
                assert 1335 not in core, found
            if i >= warmup:
                samples.append(took)
        rss = server_rss(root)
    finally:
        set_version(root, False)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    return {"cold_first_result_s": cold, "samples_s": samples,
            "median_s": statistics.median(samples), "max_s": max(samples),
            "other_files_broken": sorted(broken_files), "server_rss_mib": rss}


def server_rss(root: Path) -> float | None:
    for status in (root / ".devloop/cache").glob("dmypy-*.json"):
        pid = json.loads(status.read_text())["pid"]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def bench_plain(root: Path, edits: int, flags: list[str]) -> dict[str, object]:
    env = {**os.environ, "MYPY_CACHE_DIR": str(root / ".devloop/cache/bench-plain-mypy")}
    mypy = [str(root / ".venv/bin/mypy"), *flags]
    subprocess.run(mypy, cwd=root, env=env, capture_output=True)  # warm the cache
    samples = []
    for i in range(edits):
        t = time.time()
        set_version(root, i % 2 == 0)
        subprocess.run(mypy, cwd=root, env=env, capture_output=True)
        samples.append(time.time() - t)
    set_version(root, False)
    return {"samples_s": samples, "median_s": statistics.median(samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/devloop-bench-mypy"))
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    args = ap.parse_args()
    root = setup(args.work)
    mypy_version = subprocess.run([str(root / ".venv/bin/mypy"), "--version"],
                                  capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dl = bench_devloop(root, args.edits, args.warmup)
    inc = bench_plain(root, args.edits, [])
    full = bench_plain(root, args.edits, ["--no-incremental"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# mypy: save -> fresh result on click 8.1.7",
        "",
        f"`python3 bench/mypy_click.py --edits {args.edits} --warmup {args.warmup}`, {when}, "
        f"DevLoop at {commit}, {mypy_version}, {platform.node()} "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end: other "
        f"work shared the machine). Each edit flips the return type of "
        f"`make_default_short_help` in `{UTILS}`, which also breaks "
        f"{', '.join(f'`{f}`' for f in dl['other_files_broken'])}.",  # type: ignore[union-attr]
        "",
        "| how | median (s) | max (s) |",
        "|---|---:|---:|",
        f"| DevLoop, dmypy server kept by the daemon (save -> fresh result in the database) "
        f"| {dl['median_s']:.3f} | {dl['max_s']:.3f} |",
        f"| plain `mypy`, incremental cache warm (save -> exit) | {inc['median_s']:.3f} "
        f"| {max(inc['samples_s']):.3f} |",  # type: ignore[type-var]
        f"| plain `mypy --no-incremental` (save -> exit) | {full['median_s']:.3f} "
        f"| {max(full['samples_s']):.3f} |",  # type: ignore[type-var]
        "",
        f"First result after the daemon started (cold dmypy server): "
        f"{dl['cold_first_result_s']:.2f} s; server RSS after the edits: "
        f"{dl['server_rss_mib']:.0f} MiB.",
        "",
    ]
    (BENCH / "RESULTS-mypy.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
