"""`devloop run DIR`: run the checks once now; exit 1 if one fails (pre-commit, CI)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sqlite3
import sys
from pathlib import Path

from devloop import config, staged, statedir
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.commands.status import FAILING, render
from devloop.daemon import use_pidfd_child_watcher
from devloop.errors import EX_FAIL, EX_OK
from devloop.findings import Finding
from devloop.ignore import IgnoreRules
from devloop.scheduler import Scheduler
from devloop.store import DB_NAME, CheckState, Run, Store
from devloop.watcher import scan_files


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run the checks once now and exit non-zero if one fails",
        description="Run every check once, over the whole project: a {files} argument "
        "becomes every file (not ignored) that matches the check's patterns. With --files, "
        "only the checks those files trigger run, on those files. Results are stored like the "
        "daemon's. Exit 0 when all pass, 1 when one fails.",
    )
    add_dir_argument(p)
    p.add_argument("--files", nargs="+", metavar="FILE",
                   help="run as if these files (relative to DIR) had changed")
    p.add_argument("--reuse-fresh", action="store_true",
                   help="with --files: take a check's stored result (from the daemon) instead "
                   "of running it, when that run covered these files and started after their "
                   "last change (the git pre-commit hook uses this)")
    p.add_argument("--staged", action="store_true",
                   help="check what is staged for commit, not the working tree: the checks the "
                   "staged files trigger run on a temporary checkout of the git index (the git "
                   "pre-commit hook uses this; with --reuse-fresh, a stored result counts only "
                   "where the working tree holds exactly what is staged)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = project_root(args.dir)
    if args.staged:
        return _run_staged(root, reuse=args.reuse_fresh)
    cfg = config.load(root)
    state_dir = statedir.ensure(root)
    reused: list[CheckState] = []
    if args.reuse_fresh and args.files:
        reused = _fresh_results(root, state_dir, cfg, args.files)
        names = {st.run.check for st in reused}
        cfg = dataclasses.replace(cfg, checks=tuple(c for c in cfg.checks if c.name not in names))
    use_pidfd_child_watcher()
    results = reused + (asyncio.run(_run_once(root, state_dir, cfg, args.files))
                        if cfg.checks else [])
    print(render(sorted(results, key=lambda st: st.run.check)))
    return EX_FAIL if any(st.run.outcome in FAILING for st in results) else EX_OK


def _run_staged(root: Path, *, reuse: bool) -> int:
    """The checks the staged files trigger, run on the staged content. The daemon's result
    for a check is reused only when no file the check reads differs between the working
    tree and the index, and the staged files are byte for byte what the working tree holds."""
    state_dir = statedir.ensure(root)
    files = staged.staged_files(root)
    if not files:
        print(render([]))
        return EX_OK
    cfg = config.load(root)
    reused: list[CheckState] = []
    if reuse:
        differs = staged.unstaged_files(root)
        same = staged.identical_to_index(root, files)
        clean = dataclasses.replace(cfg, checks=tuple(
            c for c in cfg.checks
            if not any(c.matches(f) for f in differs)
            and all(f in same for f in files if c.matches(f))))
        reused = _fresh_results(root, state_dir, clean, files)
    names = {st.run.check for st in reused}
    results: list[CheckState] = []
    with staged.checkout(root) as tree:
        if not (tree / config.CONFIG_NAME).exists() and (root / config.CONFIG_NAME).exists():
            shutil.copyfile(root / config.CONFIG_NAME, tree / config.CONFIG_NAME)  # untracked
        tcfg = config.load(tree)
        tcfg = dataclasses.replace(tcfg, checks=tuple(c for c in tcfg.checks
                                                      if c.name not in names))
        if tcfg.checks:
            use_pidfd_child_watcher()
            # the project's own tool caches (mypy's is keyed by content where paths differ)
            environ = {**os.environ, "CACHE_DIRECTORY": str(state_dir / "cache")}
            for st in asyncio.run(_run_once(tree, statedir.ensure(tree), tcfg, files,
                                            environ)):
                # findings are relative to the project root: the same files in the real tree
                run = dataclasses.replace(st.run, output=st.run.output.replace(str(tree),
                                                                               str(root)))
                results.append(dataclasses.replace(st, run=run))
    results = reused + results
    print(render(sorted(results, key=lambda st: st.run.check)))
    return EX_FAIL if any(st.run.outcome in FAILING for st in results) else EX_OK


def _fresh_results(root: Path, state_dir: Path, cfg: config.Config,
                   files: list[str]) -> list[CheckState]:
    """Stored results that still hold for `files`: the check's last run covered them all
    (or the whole project) and started after each was last modified."""
    if not (state_dir / DB_NAME).exists():
        return []
    try:
        store = Store.open(state_dir, readonly=True)
        try:
            latest = {st.run.check: st for st in store.latest()}
        finally:
            store.close()
    except sqlite3.Error:
        return []
    fresh = []
    for check in cfg.checks:
        st = latest.get(check.name)
        triggered = [f for f in files if check.matches(f)]
        if st is None or not triggered or st.run.outcome not in ("pass", "fail"):
            continue
        try:
            newest = max(os.stat(root / f).st_mtime for f in triggered)
        except OSError:
            continue
        covered = st.run.files is None or set(triggered) <= set(st.run.files)
        if covered and st.run.started > newest:
            print(f"{check.name}: {st.run.outcome} (the daemon's result, still fresh)",
                  file=sys.stderr)
            fresh.append(st)
    return fresh


async def _run_once(root: Path, state_dir: Path, cfg: config.Config,
                    files: list[str] | None, environ: dict[str, str] | None = None,
                    ) -> list[CheckState]:
    store = Store.open_writer(state_dir)
    results: list[CheckState] = []

    def on_result(run: Run, findings: list[Finding]) -> None:
        run_id = 0
        try:
            run_id = store.record(run, findings)
        except sqlite3.Error as exc:  # the verdict still counts; only its record is lost
            print(f"devloop: warning: cannot store the result of {run.check}: {exc}",
                  file=sys.stderr)
        results.append(CheckState(run=run, run_id=run_id, findings=tuple(findings)))
        print(f"{run.check}: {run.outcome} in {run.duration:.2f}s", file=sys.stderr)

    rules = IgnoreRules(root, cfg.ignore)
    scheduler = Scheduler(root, cfg, on_result, lambda: scan_files(root, rules), environ)
    if files:
        rel = [str(Path(f)) for f in files if not rules.is_ignored(str(Path(f)), False)]
        scheduler.changed(rel)
    else:
        scheduler.run_whole(on_start_only=False)
    try:
        await scheduler.wait_idle()
    finally:
        await scheduler.stop()
        store.close()
    return sorted(results, key=lambda st: st.run.check)
