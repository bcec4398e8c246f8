"""What `IgnoreRules.is_ignored` costs with pathspec's re2 backend and with its simple one.

    python3 bench/ignore_cost.py [--calls N]

The rules: the built-in ignores and a small root .gitignore. Paths five levels deep, a
directory and a file, not ignored (every pattern is tried) and ignored. Each backend runs
in its own interpreter: "simple" is pathspec as it is without google-re2 installed
(re2 unimportable there). Prints the time per call (the best of 5 repeats) and the
VmRSS that importing pathspec and building the rules added to that interpreter.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

GITIGNORE = "*.log\nbuild/\ndist/\n/coverage\n*.tmp\n.env\n"
PATHS = (  # (path, is_dir)
    ("src/pkg/sub/mod/deep", True),
    ("src/pkg/sub/mod/file.py", False),
    ("src/pkg/sub/mod/build", True),
    ("src/pkg/sub/mod/a.log", False),
)
BACKENDS = ("re2", "simple")


def vmrss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def child(backend: str, calls: int) -> dict[str, object]:
    if backend == "simple":
        sys.modules["re2"] = None  # type: ignore[assignment]  # as if not installed
    before = vmrss_kib()
    from devloop.ignore import IgnoreRules

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ".gitignore").write_text(GITIGNORE)
        rules = IgnoreRules(Path(tmp))
        rules.load_dir("")
    kind = type(rules._forced._backend).__name__  # which backend ran
    rss = vmrss_kib() - before
    per_call = {}
    for path, is_dir in PATHS:
        call = functools.partial(rules.is_ignored, path, is_dir)
        best = min(timeit.repeat(call, number=calls, repeat=5))
        per_call[f"{path}{'/' if is_dir else ''} -> {rules.is_ignored(path, is_dir)}"] = (
            best / calls * 1e6)
    return {"backend": backend, "class": kind, "rss_kib": rss, "us_per_call": per_call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.calls)))
        return
    for backend in BACKENDS:
        out = subprocess.run([sys.executable, __file__, "--child", backend,
                              "--calls", str(args.calls)],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out)
        print(f"{backend} ({result['class']}): +{result['rss_kib'] / 1024:.1f} MiB VmRSS "
              "for pathspec and the rules")
        for what, us in result["us_per_call"].items():
            print(f"    {what:40} {us:6.2f} us per call")


if __name__ == "__main__":
    main()
