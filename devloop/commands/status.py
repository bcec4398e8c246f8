"""`devloop status DIR`: what passed, what failed, with file:line findings."""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from dataclasses import asdict

from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.core.daemon_health import STATE_DIR
from devloop.errors import EX_FAIL, EX_NOINPUT, EX_OK, DevloopError
from devloop.store import DB_NAME, CheckState, Store

FAILING = ("fail", "error", "timeout")
MARK = {"pass": "✓", "fail": "✗", "error": "!", "timeout": "⏱", "cancelled": "-"}


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="show the last result of each check",
        description="Show the last run of each check and its findings, read from "
        "DIR/.devloop/devloop.db (safe while the daemon writes). Exit 0 when no check is "
        "failing, 1 when one is, 66 when there are no results yet.",
    )
    add_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def render(states: list[CheckState]) -> str:
    lines = []
    for st in states:
        r = st.run
        scope = "whole project" if r.files is None else f"{len(r.files)} files"
        code = "" if r.exit_code is None else f", exit {r.exit_code}"
        lines.append(f"{MARK[r.outcome]} {r.check}: {r.outcome} in {r.duration:.2f}s "
                     f"({scope}{code}), {_ago(r.started)}")
        for f in st.findings:
            col = f":{f.column}" if f.column is not None else ""
            code_ = f" [{f.code}]" if f.code else ""
            lines.append(f"    {f.file}:{f.line}{col}: {f.severity}: {f.message}{code_}")
        if r.outcome in ("error", "timeout") or (r.outcome == "fail" and not st.findings):
            tail = r.output.strip().splitlines()[-5:]
            lines.extend(f"    | {t}" for t in tail)
    failing = sum(st.run.outcome in FAILING for st in states)
    lines.append(f"{len(states)} checks, {failing} failing")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    root = project_root(args.dir)
    db = root / STATE_DIR / DB_NAME
    if not db.exists():
        raise DevloopError(f"no results yet in {db}: start the daemon "
                           f"(devloop watch --foreground {args.dir}) or run 'devloop run'",
                           EX_NOINPUT)
    try:
        store = Store.open(root / STATE_DIR, readonly=True)
        states = store.latest()
        store.close()
    except sqlite3.Error as exc:
        raise DevloopError(f"cannot read {db}: {exc}", EX_NOINPUT) from None
    if not states:
        raise DevloopError(f"no results yet in {db}: no check has run", EX_NOINPUT)
    if args.json:
        print(json.dumps([
            {"check": st.run.check, **asdict(st.run), "run_id": st.run_id,
             "findings": [asdict(f) for f in st.findings]}
            for st in states
        ], indent=2))
    else:
        print(render(states))
    return EX_FAIL if any(st.run.outcome in FAILING for st in states) else EX_OK
