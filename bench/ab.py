#!/usr/bin/env python3
"""DevLoop against DevLoop: the right-after-ready pass of bench/run.py for source trees.

    git archive main | tar -x -C /tmp/old
    python3 bench/ab.py --dirs 10000 --files 100000 --rounds 3 old=/tmp/old new=.

Each variant NAME=DIR runs `python -m devloop` with PYTHONPATH=DIR, in turn, `--rounds`
times, on one generated tree (in --workdir); the figures of every round and their median
are printed. For a quick look while changing the code, not for RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

KEYS = ("ready_s", "reaction_median_ms", "reaction_p99_ms", "runs_per_edit",
        "cpu_ready_to_quiet_s", "quiet_after_ready_s", "rss_mib")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=DIR (a source tree with devloop/)")
    ap.add_argument("--dirs", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--node-modules", type=int, default=20_000, help="ignored directories")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--empty", action="store_true", help="empty files (a big tree in tmpfs)")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/devloop-bench-ab"))
    args = ap.parse_args()
    if args.empty:
        bench.PAGE = b""
    args.workdir.mkdir(parents=True, exist_ok=True)
    recorder, _ = bench.build_recorder(args.workdir)
    scale = bench.Scale(f"ab-{args.dirs}-{args.files}-{args.node_modules}-{int(args.empty)}",
                        args.dirs, args.files, args.node_modules, args.node_modules,
                        bench.AFTER_READY_EDITS, 0.0, 0, 30.0, 2.5, 1024)
    tree = bench.make_tree(args.workdir, scale, recorder)
    ctx = bench.Ctx(args.workdir, tree, recorder, scale, ready_timeout=600)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for i in range(args.rounds):
        for variant in args.variants:
            name, _, src = variant.partition("=")
            os.environ["PYTHONPATH"] = str(Path(src).resolve())
            logdir = args.workdir / "logs" / "DevLoop"
            shutil.rmtree(logdir, ignore_errors=True)
            logdir.mkdir(parents=True)
            res = bench.phase_after_ready(bench.DevLoop(), ctx, logdir)
            results[variant].append(res)
            shown = {k: res.get(k) for k in KEYS}
            print(f"{name} round {i + 1} (load {res['loadavg_at_ready']}): {shown}", flush=True)
    for variant, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs if r.get(k) is not None)
               for k in KEYS if any(r.get(k) is not None for r in runs)}
        print(f"{variant.partition('=')[0]} median of {len(runs)} rounds: {med}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
