#!/usr/bin/env bash
# The daemon's memory at two commits, same venv: VmRSS of an idle `devloop watch --foreground`
# on a 50-file project, 6 s after start, and whether pydantic_core (the MCP SDK) and OpenSSL
# (libssl, libcrypto) are mapped.
#   bench/daemon_rss.sh BEFORE_REV AFTER_REV [RUNS]     (e.g. results mcp 3)
# HIDE=re2,other: those modules are unimportable in the daemon, as if not installed
# (e.g. HIDE=re2 bench/daemon_rss.sh HEAD HEAD 3: what google-re2 costs).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/proj"
for i in $(seq 1 50); do echo "x = $i" > "$work/proj/m$i.py"; done
printf '[checks.python-syntax]\ncommand = ["%s", "-m", "devloop.tools.pysyntax", "{files}"]\npatterns = ["*.py"]\n' \
    "$python" > "$work/proj/devloop.toml"
for rev in "$1" "$2"; do
    mkdir -p "$work/$rev"
    git -C "$repo" archive "$rev" devloop | tar -x -C "$work/$rev"
    # byte-compiled, as pip installs it (else, under PYTHONDONTWRITEBYTECODE, every start
    # compiles the sources: 0.8 MiB more heap)
    "$python" -m compileall -q "$work/$rev/devloop"
done
cd "$work"  # not the checkout: `python -m` puts the current directory first on sys.path
for _ in $(seq 1 "${3:-3}"); do
    for rev in "$1" "$2"; do
        PYTHONPATH="$work/$rev" "$python" -c 'import runpy, sys
for name in filter(None, sys.argv.pop(1).split(",")):
    sys.modules[name] = None
runpy.run_module("devloop", run_name="__main__", alter_sys=True)' \
            "${HIDE:-}" watch --foreground "$work/proj" 2>/dev/null &
        pid=$!
        sleep 6
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
        mapped=$(grep -c pydantic_core "/proc/$pid/maps" || true)
        openssl=$(grep -cE 'libssl|libcrypto' "/proc/$pid/maps" || true)
        kill -TERM "$pid"
        wait "$pid" || true
        echo "$rev: VmRSS ${rss} kB, pydantic_core mappings: $mapped, OpenSSL mappings: $openssl"
    done
done
