"""What the results say now, for `devloop status`, `status --wait` and `devloop mcp`.

`snapshot(root)` reads the results database and the state the daemon publishes there
(read-only, WAL: the daemon is never blocked) and says whether a daemon still keeps
it true. `wait_fresh(root, timeout)` returns once every change made before the call
has reached the daemon and no check is queued or running.

How `wait_fresh` knows the daemon has seen the changes made before the call: inotify
queues an event in the writer's own system call, so every save that returned before
the call is already queued in the daemon's inotify fd, only not yet read (the loop may
be busy, or the debounce not over). The waiter notes the time t0, then writes a byte
into the daemon's FIFO `.devloop/sync`; the daemon, on reading it, notes the time
(later than t0), drains its project inotify fd (so reads every save made before t0),
lets a pending walk of new directories or a reload finish, hands the changes to the
scheduler and publishes `synced_at` with the checks' new states in one transaction.
A published state with `synced_at >= t0` therefore includes every change before the
call, and the checks those changes trigger are already queued in it. The waiter then
sleeps on inotify (the database's files in `.devloop/`) and on a pidfd of the daemon,
never on a timer. A FIFO, not a socket: its path has no length limit, its mode keeps
other users out, and opening it fails at once (ENXIO) when no daemon reads it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sqlite3
import stat
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from inotify_simple import INotify, flags

from devloop import lockholder, statedir
from devloop.core.daemon_health import STATE_DIR
from devloop.errors import EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE, DevloopError
from devloop.store import DB_NAME, FAILING, CheckState, DaemonRow, LiveState, Run, Store

SYNC_NAME = "sync"  # a FIFO: a waiter writes to it, the daemon catches up with the changes
REASON_LINES = 3
# `error: ...`, `path: error: ...`, pytest's `E   ...`, a traceback's `ValueError: ...`
_ERROR_LINE = re.compile(r"(^|:\s*)(error|fatal)\b[:\s]|^E\s|^([\w.]*(Error|Exception))\b:",
                         re.IGNORECASE)


def daemon_pid(root: Path) -> int | None:
    """The PID of the daemon watching `root` (a holder of its lock), or None."""
    try:
        state_dir = statedir.existing(root)
        lock = lockholder.lock_identity(state_dir) if state_dir is not None else None
        holders = lockholder.flock_holders(lock) if lock is not None else set()
    except (OSError, DevloopError):  # another user's .devloop/: reading the results says why
        return None
    if state_dir is None or not holders:
        return None
    pid = statedir.holder_pid(state_dir)
    return pid if pid in holders else min(holders)  # the file may name an earlier taker


def reason(st: CheckState) -> str | None:
    """Why a check failed, when its findings do not say: the tool adapter's reason, else
    the first `error:` line of the output and what follows, else its first lines."""
    r = st.run
    if r.outcome not in FAILING or (st.findings and r.outcome == "fail"):
        return r.reason
    if r.reason:
        return r.reason
    lines = [ln.rstrip() for ln in r.output.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if _ERROR_LINE.search(ln):
            return "\n".join(lines[i:i + REASON_LINES])
    return "\n".join(lines[:REASON_LINES]) or None


def result_entry(st: CheckState) -> dict[str, Any]:
    """A check's last result as `status --json` prints it (the live fields come after)."""
    return {**asdict(st.run), "run_id": st.run_id,
            "findings": [asdict(f) for f in st.findings], "reason": reason(st),
            "failing": st.failing, "leftover": st.leftover}


def _open(root: Path) -> Store:
    db = root / STATE_DIR / DB_NAME
    try:
        os.stat(db)
    except FileNotFoundError:
        raise DevloopError(f"no results yet in {db}: start the daemon "
                           f"(devloop watch {root}) or run 'devloop run {root}'",
                           EX_NOINPUT) from None
    except OSError as exc:  # another user's private .devloop/
        raise DevloopError(f"cannot read {db}: {exc.strerror}", EX_NOINPUT) from None
    try:
        return Store.open(root / STATE_DIR, readonly=True)
    except sqlite3.Error as exc:
        raise DevloopError(f"cannot read {db}: {exc}", EX_NOINPUT) from None


def _read(root: Path) -> tuple[list[CheckState], dict[str, float | None], DaemonRow | None,
                               dict[str, LiveState]]:
    store = _open(root)
    try:
        with store.reading():
            states = store.latest()
            try:
                totals = {k: v.failing_since for k, v in store.totals().items()}
                row, live = store.live()
            except sqlite3.OperationalError:  # a database this devloop has not opened yet
                totals, row, live = {}, None, {}
    except sqlite3.Error as exc:
        raise DevloopError(f"cannot read {root / STATE_DIR / DB_NAME}: {exc}",
                           EX_NOINPUT) from None
    finally:
        store.close()
    return states, totals, row, live


def snapshot(root: Path, checks: Iterable[str] | None = None) -> dict[str, Any]:
    """The results now: {"daemon": ..., "summary": ..., "checks": [...]}.

    Each entry of "checks" is what `devloop status --json` prints for the check: its last
    run, its findings, and `state` / `stale` (None when no daemon runs: nobody knows).
    """
    pid = daemon_pid(root)
    states, failing_since, row, live = _read(root)
    if row is None or pid is None or row.pid != pid:
        live = {}  # left by a daemon that was killed, or not yet published by a new one
    now = time.time()
    by_name = {st.run.check: st for st in states}
    names = sorted(set(by_name) | set(live))
    wanted = None if checks is None else set(checks)
    entries = []
    for name in names:
        if wanted is not None and name not in wanted:
            continue
        st, ls = by_name.get(name), live.get(name)
        entry = result_entry(st) if st is not None else {  # no result yet: queued or running
            **dict.fromkeys(f.name for f in fields(Run)), "check": name, "run_id": None,
            "findings": [], "reason": None, "failing": False, "leftover": 0}
        entry["state"] = None if ls is None else ls.state
        entry["state_seconds"] = None if ls is None else round(max(now - ls.since, 0.0), 3)
        entry["stale"] = None if ls is None else bool(  # no result: nothing to be stale
            st is not None and ls.changed_at is not None and ls.changed_at > st.run.started)
        entry["failing_since"] = failing_since.get(name) if st is not None else None
        entries.append(entry)
    running = pid is not None
    return {
        "project": str(root),
        "daemon": {"running": running, "pid": pid,
                   "publishing": bool(live),
                   "synced_at": row.synced_at if live and row is not None else None},
        "summary": {
            "checks": len(entries),
            "failing": sum(e["failing"] for e in entries),
            "running": sum(e["state"] == "running" for e in entries),
            "queued": sum(e["state"] == "queued" for e in entries),
            "stale": sum(bool(e["stale"]) for e in entries),
        },
        "checks": entries,
    }


def is_fresh(snap: dict[str, Any], since: float | None) -> bool:
    """The daemon has read every change made before `since` and no check waits or runs."""
    d = snap["daemon"]
    if not d["publishing"]:
        return False
    if since is not None and (d["synced_at"] is None or d["synced_at"] < since):
        return False
    # None: a result of a check the daemon does not run (no longer configured)
    return all(e["state"] in ("idle", None) for e in snap["checks"])


def open_sync_fifo(state_dir: Path) -> int:
    """The daemon's end of `.devloop/sync`: made afresh, 0600, read without blocking
    (opened read-write, so it never reads end-of-file when a waiter closes it)."""
    path = state_dir / SYNC_NAME
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)


def _poke(state_dir: Path) -> bool:
    """Ask the daemon to catch up. False when we may not (another user's FIFO)."""
    try:
        fd = os.open(state_dir / SYNC_NAME, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                     | os.O_CLOEXEC)
    except OSError:  # ENXIO: nobody reads it; EACCES: not ours; ELOOP: not a FIFO
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        with contextlib.suppress(BlockingIOError):  # full: a poke is already waiting
            os.write(fd, b"\n")
    finally:
        os.close(fd)
    return True


def no_daemon(root: Path) -> DevloopError:
    return DevloopError(
        f"no devloop daemon is watching {root}, so nothing will bring its results up to "
        f"date: start one (devloop watch {root}) or run the checks once (devloop run {root})",
        EX_UNAVAILABLE)


def wait_fresh(root: Path, timeout: float, checks: Iterable[str] | None = None
               ) -> dict[str, Any]:
    """Block until the results cover every change made before the call (see the module
    docstring) or `timeout` seconds pass; the snapshot then, with "fresh": True/False.

    Raises DevloopError(EX_UNAVAILABLE) when no daemon runs or it stops meanwhile.
    """
    if timeout < 0:
        raise DevloopError(f"timeout must not be negative: {timeout:g}", EX_USAGE)
    deadline = time.monotonic() + timeout
    state_dir = root / STATE_DIR
    pid = daemon_pid(root)
    if pid is None:
        raise no_daemon(root)
    names = None if checks is None else list(checks)
    with contextlib.ExitStack() as stack:
        ino = stack.enter_context(INotify())
        ino.add_watch(state_dir, flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO
                      | flags.CREATE | flags.DELETE)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise no_daemon(root) from None
        stack.callback(os.close, pidfd)
        since: float | None = time.time()
        if not _poke(state_dir):
            since = None  # not ours to write: wait until the daemon is idle, no more
        while True:
            snap = snapshot(root, names)
            if not snap["daemon"]["running"]:
                raise no_daemon(root)
            if is_fresh(snap, since):
                return {**snap, "fresh": True}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {**snap, "fresh": False}
            ready, _, _ = select.select([ino.fileno(), pidfd], [], [], remaining)
            if pidfd in ready:
                raise DevloopError(f"the devloop daemon watching {root} stopped while "
                                   "waiting for its results", EX_UNAVAILABLE)
            if ready:
                ino.read(timeout=0)
