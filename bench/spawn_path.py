#!/usr/bin/env python3
"""What DevLoop does between an inotify event and the check it starts, counted in syscalls.

    git archive main | tar -x -C /tmp/old
    python3 bench/spawn_path.py old=/tmp/old new=.

Each variant NAME=DIR runs `python -m devloop` with PYTHONPATH=DIR on one generated tree
(bench/run.py's, with its `debounce_ms = 0` recorder check), with `strace -f` attached to
the running daemon, and makes `--edits` edits. For each edit, the daemon's syscalls from
the read() of the inotify fd to the vfork() of the check are counted: how many, which,
and how many turns of the event loop (epoll_wait calls) lie in between. Counts, not
times: strace slows every syscall, so no wall-clock figure is taken from this. Needs strace.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

LINE = re.compile(r"(\d+)\s+[\d.]+ (\w+)\((\d*)")
SPAWN = ("vfork", "clone", "clone3", "fork")
DATABASE = ("pwrite64", "fsync", "fdatasync")


@dataclass
class Way:
    """The syscalls of one event's way to its spawn."""

    calls: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def inotify_fd(pid: int) -> int:
    """The daemon's inotify fd: the one whose fdinfo lists watches."""
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            if "inotify wd:" in f.read():
                return int(fd)
    raise RuntimeError(f"process {pid} has no inotify fd")


def paths(trace: Path, pid: int, fd: int) -> list[Way]:
    """From each read() of the inotify fd by the main thread to the next spawn."""
    found: list[Way] = []
    current: Counter[str] | None = None
    for line in trace.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m is None or int(m.group(1)) != pid:
            continue
        name, first = m.group(2), m.group(3)
        if name == "read" and first == str(fd) and current is None:
            current = Counter()
        elif current is not None:
            if name in SPAWN:
                found.append(Way(current))
                current = None
            else:
                current[name] += 1
    return found


def measure(name: str, src: str, ctx: bench.Ctx, edits: int) -> list[Way]:
    os.environ["PYTHONPATH"] = str(Path(src).resolve())
    logdir = ctx.workdir / "logs" / "DevLoop"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    tool = bench.DevLoop()
    r = tool.start(ctx, logdir)
    trace = ctx.workdir / f"strace-{name}.txt"
    try:
        time.sleep(1.0)  # the snapshot after READY: edits from now on meet a settled daemon
        fd = inotify_fd(r.proc.pid)
        strace = subprocess.Popen(["strace", "-f", "-ttt", "-o", str(trace), "-p",
                                   str(r.proc.pid)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # attached
            bench.phase_reaction(r, ctx, tool, edits)
        finally:
            strace.terminate()
            strace.wait()
    finally:
        tool.stop(r)
    return paths(trace, r.proc.pid, fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=DIR (a source tree with devloop/)")
    ap.add_argument("--dirs", type=int, default=200)
    ap.add_argument("--files", type=int, default=2_000)
    ap.add_argument("--edits", type=int, default=30)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/devloop-bench-spawn"))
    args = ap.parse_args()
    if shutil.which("strace") is None:
        print("strace is not installed", file=sys.stderr)
        return 69
    args.workdir.mkdir(parents=True, exist_ok=True)
    recorder, _ = bench.build_recorder(args.workdir)
    scale = bench.Scale(f"spawn-{args.dirs}-{args.files}", args.dirs, args.files, 200, 200,
                        args.edits, 0.0, 0, 8.0, 1.5, 64)
    tree = bench.make_tree(args.workdir, scale, recorder)
    ctx = bench.Ctx(args.workdir, tree, recorder, scale)
    for variant in args.variants:
        name, _, src = variant.partition("=")
        found = measure(name, src, ctx, args.edits)
        if not found:
            print(f"{name}: no event reached a spawn")
            continue
        totals = [p.total for p in found]
        every: Counter[str] = Counter()
        for p in found:
            every.update(p.calls)
        with_db = sum(1 for p in found if any(p.calls[c] for c in DATABASE))
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{name} ({len(found)} events, load {load}): "
              f"syscalls from the inotify read to the vfork: median {statistics.median(totals)}"
              f" (min {min(totals)}, max {max(totals)}); loop turns (epoll_wait) median "
              f"{statistics.median(p.calls['epoll_wait'] for p in found)}; events with a "
              f"database write on the way: {with_db}; mkdir per event "
              f"{every['mkdir'] / len(found):.1f}")
        print("  per event: " + ", ".join(f"{k} {v / len(found):.1f}"
                                          for k, v in every.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
