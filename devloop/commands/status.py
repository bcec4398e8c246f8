"""`devloop status [DIR] [CHECK...]`: a summary first, then each check, its state and its
findings (capped); `--wait` first waits until the results cover every change made before."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from devloop import results
from devloop.commands import Subparsers, project_root
from devloop.core.daemon_health import STATE_DIR
from devloop.errors import EX_FAIL, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE, DevloopError
from devloop.printable import escape_controls
from devloop.store import FAILING as FAILING  # `devloop run` shares it
from devloop.store import CheckState

MARK = {"pass": "✓", "fail": "✗", "error": "!", "timeout": "⏱", "cancelled": "-"}
STATE_MARK = {"running": "⟳", "queued": "⧗"}
DEFAULT_LIMIT = 10
DEFAULT_WAIT_S = 600.0
COUNT_ORDER = ("failed", "errors", "passed", "skipped")
# what a project's file names and check output may hold that a terminal would obey


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="show the last result and the state of each check",
        description="A summary line, then each check: its state (running, queued), its last "
        "result (stale when a file it covers changed after the run started) and its findings, "
        "read from DIR/.devloop/devloop.db (safe while the daemon writes). Exit 0 when no check "
        "is failing, 1 when one is, 66 when there are no results yet; with --wait also 75 on "
        "timeout and 69 when no daemon watches the project.",
    )
    p.add_argument("args", nargs="*", metavar="DIR|CHECK",
                   help="the project directory (default: the current directory; the first "
                   "argument is the directory when it holds .devloop/ or devloop.toml), then "
                   "the checks to show (default: all)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--all", action="store_true",
                   help=f"every finding (default: the first {DEFAULT_LIMIT} of each check)")
    p.add_argument("--wait", action="store_true",
                   help="first wait until every check triggered by the changes made before "
                   "this call has a result covering them and none is queued or running")
    p.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S, metavar="S",
                   help="with --wait: give up after S seconds, exit 75 "
                   f"(default {DEFAULT_WAIT_S:g})")
    p.set_defaults(func=run)


def _split(args: list[str]) -> tuple[str, list[str]]:
    """DIR and the check names: the first argument is DIR when it is a project directory."""
    if args:
        first = Path(args[0])
        if first.is_dir() and ((first / STATE_DIR).is_dir() or (first / "devloop.toml").exists()):
            return args[0], args[1:]
        if len(args) == 1 and not first.exists() and ("/" in args[0] or args[0] == "."):
            return args[0], []  # a missing directory, not a check name: exit 66 says so
    return ".", args


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    keys = [k for k in COUNT_ORDER if counts.get(k)] + sorted(
        k for k in counts if k not in COUNT_ORDER and counts[k])
    return ", ".join(f"{counts[k]} {k}" for k in keys)


def _result_text(e: dict[str, Any]) -> str:
    scope = "whole project" if e["files"] is None or e["covers_all"] else f"{len(e['files'])} files"
    code = "" if e["exit_code"] is None else f", exit {e['exit_code']}"
    counts = _counts(e["counts"])
    return (f"{e['outcome']} in {e['duration']:.2f}s ({scope}{code}), {_ago(e['started'])}"
            + (f": {counts}" if counts else ""))


def _check_lines(e: dict[str, Any], limit: int | None) -> list[str]:
    """The check's lines; what came from the project or its tools goes through printable()."""
    e = {**e, "check": printable(e["check"])}
    state = e["state"]
    if state in STATE_MARK:
        last = "none yet" if e["outcome"] is None else _result_text(e)
        stale = ", stale" if e["stale"] else ""
        lines = [f"{STATE_MARK[state]} {e['check']}: {state} {e['state_seconds']:.1f}s; "
                 f"last result: {last}{stale}"]
    elif e["outcome"] is None:
        lines = [f"· {e['check']}: no result yet (no change has triggered it)"]
    else:
        stale = ", stale" if e["stale"] else ""
        mark = MARK["fail"] if e["leftover"] else MARK[e["outcome"]]
        lines = [f"{mark} {e['check']}: {_result_text(e)}{stale}"]
    if e["leftover"]:
        lines[0] += (f"; still failing: {e['leftover']} errors found earlier remain in files "
                     "this run did not check")
    findings = e["findings"]
    shown = findings if limit is None else findings[:limit]
    for f in shown:
        col = f":{f['column']}" if f["column"] is not None else ""
        code = f" [{f['code']}]" if f["code"] else ""
        lines.append(printable(f"    {f['file']}:{f['line']}{col}: {f['severity']}: "
                               f"{f['message']}{code}"))
    if len(findings) > len(shown):
        lines.append(f"    … {len(findings) - len(shown)} more (--all shows every finding)")
    if e["reason"] and (e["outcome"] != "fail" or not findings):
        lines.extend(f"    | {printable(t)}" for t in e["reason"].splitlines())
    return lines


def summary_line(snap: dict[str, Any]) -> str:
    s = snap["summary"]
    failing = [e["check"] for e in snap["checks"] if e["failing"]]
    parts = [f"{s['checks']} check{'' if s['checks'] == 1 else 's'}, {s['failing']} failing"
             + (f" ({printable(', '.join(failing))})" if failing else "")]
    parts += [f"{s[k]} {k}" for k in ("running", "queued", "stale") if s[k]]
    return ", ".join(parts)


def printable(text: str) -> str:
    """What came from the project or its tools, never sent raw to the terminal."""
    return escape_controls(text, keep_tabs=True)


def render_snapshot(snap: dict[str, Any], limit: int | None = DEFAULT_LIMIT) -> str:
    lines = [summary_line(snap)]
    if not snap["daemon"]["running"]:
        lines.append(f"no daemon is watching {snap['project']}: these results may be stale "
                     f"(start one: devloop watch {snap['project']})")
    for e in snap["checks"]:
        lines.extend(_check_lines(e, limit))
    return "\n".join(lines)


def render(states: list[CheckState], limit: int | None = None) -> str:
    """Results of `devloop run` (no daemon state): each check, then the summary."""
    entries = [{**results.result_entry(st), "state": None, "stale": None} for st in states]
    lines = [ln for e in entries for ln in _check_lines(e, limit)]
    failing = sum(e["failing"] for e in entries)
    lines.append(f"{len(entries)} checks, {failing} failing")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    dir_, names = _split(args.args)
    root = project_root(dir_)
    if args.wait and not args.timeout >= 0:  # also nan
        raise DevloopError(f"--timeout must be a number of seconds >= 0: {args.timeout}",
                           EX_USAGE)
    snap = results.snapshot(root)
    known = [e["check"] for e in snap["checks"]]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DevloopError(f"no check named {', '.join(unknown)} "
                           f"(checks: {', '.join(known) or 'none yet'})", EX_USAGE)
    if args.wait:
        snap = results.wait_fresh(root, args.timeout, names or None)
    elif names:
        snap = results.snapshot(root, names)
    if not snap["checks"]:
        raise DevloopError(f"no results yet in {root / STATE_DIR}: no check has run",
                           EX_NOINPUT)
    if args.json:  # the list it always was: checks with a result (a first run shows later)
        print(json.dumps([e for e in snap["checks"] if e["outcome"] is not None], indent=2))
    else:
        print(render_snapshot(snap, None if args.all else DEFAULT_LIMIT))
    if args.wait and not snap["fresh"]:
        busy = [e["check"] for e in snap["checks"] if e["state"] != "idle"]
        print(f"devloop: timed out after {args.timeout:g}s: the results do not cover the "
              f"latest changes yet ({', '.join(busy) or 'the daemon has not caught up'})",
              file=sys.stderr)
        return EX_TEMPFAIL
    return EX_FAIL if any(e["failing"] for e in snap["checks"]) else EX_OK
