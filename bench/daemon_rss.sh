#!/usr/bin/env bash
# The daemon's memory at two commits, same venv: VmRSS of an idle `devloop watch --foreground`
# on a 50-file project, 6 s after start, and whether pydantic_core (the MCP SDK) and OpenSSL
# (libssl, libcrypto) are mapped.
#   bench/daemon_rss.sh BEFORE_REV AFTER_REV [RUNS]     (e.g. results mcp 3)
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
done
for _ in $(seq 1 "${3:-3}"); do
    for rev in "$1" "$2"; do
        PYTHONPATH="$work/$rev" "$python" -m devloop watch --foreground "$work/proj" 2>/dev/null &
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
