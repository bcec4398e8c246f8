"""The loop that ties the rooms together: start, watch, run, reload, stop.

One thread, one asyncio loop. The inotify fd, child processes, timers
(watchdog ping, heartbeat, debounce) and signals are all callbacks on it, so
the watchdog ping proves that this loop, and nothing else, is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from devloop import config as config_mod
from devloop import reaper, results, statedir
from devloop.config import Config
from devloop.core import daemon_health
from devloop.errors import (
    EX_CANTCREAT,
    EX_IOERR,
    EX_NOINPUT,
    EX_OK,
    EX_OSERR,
    EX_TEMPFAIL,
    DevloopError,
)
from devloop.findings import Finding
from devloop.ignore import EXCLUDE, IgnoreRules
from devloop.logonce import Trouble
from devloop.scheduler import Scheduler
from devloop.store import FAILING, CheckTotals, LiveState, Run, Store
from devloop.systemd import Notifier
from devloop.tools import mypy as mypy_tool
from devloop.watcher import CTIME_SLACK_NS, Watcher, WatchLimitError, is_dir_mark, scan_files

log = logging.getLogger("devloop")

STATUS_MIN_INTERVAL_S = 0.25
HEARTBEAT_MIN_INTERVAL_S = 1.0  # after a result, the heartbeat is rewritten at most this often
DB_BUSY_TIMEOUT_S = 0.2  # the loop never waits longer for a lock held by another process
DB_RETRY_S = 1.0
MAX_UNSAVED = 10_000
EXTEND_EVERY_S = 1.0  # during the initial walk, ask systemd for more start time this often
EXTEND_BY_S = 10.0
SLOW_CALLBACK_ENV = "DEVLOOP_SLOW_CALLBACK_MS"  # bench mode: log callbacks longer than this
RETAKE_DELAY_S = 2.0  # a deleted .devloop is recreated this long after it is noticed
LEVELS = {"pass": logging.INFO, "cancelled": logging.INFO, "fail": logging.WARNING,
          "error": logging.ERROR, "timeout": logging.ERROR}


def use_pidfd_child_watcher() -> None:
    """Python 3.11 watches children with a thread each by default; pidfds keep one thread."""
    if sys.version_info < (3, 12):
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


class Daemon:
    def __init__(self, root: Path, state_dir: Path, config: Config, notifier: Notifier,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.root = root
        self.on_ready = on_ready  # background mode: tell the waiting parent (READY=1's twin)
        self.state_dir = state_dir
        self.config = config
        self.notifier = notifier
        self.started = time.monotonic()
        self.started_at = time.time()
        self.store = Store.open_writer(state_dir, busy_timeout=DB_BUSY_TIMEOUT_S)
        self._unsaved: deque[Callable[[Store], object]] = deque()  # writes, in order
        self._flush_handle: asyncio.TimerHandle | None = None
        self.ledger = reaper.GroupLedger(state_dir)
        self.watcher = Watcher(root, IgnoreRules(root, config.ignore))
        self.scheduler: Scheduler | None = None
        self.exit_code = EX_OK
        self.last_run: Run | None = None
        # the truth before this start: counters, last success, failing streaks, outcomes
        try:
            self.store.forget_checks_except(c.name for c in config.checks)  # removed meanwhile
        except sqlite3.Error as exc:
            log.warning("cannot forget the results of removed checks yet: %s", exc)
        try:
            self.totals: dict[str, CheckTotals] = self.store.totals()
            latest = self.store.latest()
        except sqlite3.Error as exc:
            log.error("cannot read the earlier results in %s: %s", state_dir, exc)
            self.totals, latest = {}, []
        self.failing = {st.run.check for st in latest if st.failing}
        self.last_duration = {st.run.check: round(st.run.duration, 4) for st in latest}
        self._live: dict[str, LiveState] = {}
        self._publish_handle: asyncio.Handle | None = None
        self._synced_at: float | None = None
        self._sync_asked: float | None = None  # a waiter's poke, answered once walks end
        # the FIFO `status --wait` writes to: made now, so a poke during the initial walk
        # waits in it (see devloop.results)
        self._sync = self._open_sync()
        self._heartbeat_at = float("-inf")
        self._heartbeat_soon_handle: asyncio.TimerHandle | None = None
        self.config_problem: str | None = None
        self.db_trouble = Trouble(log, "results database writable again")
        self.heartbeat_trouble = Trouble(log, "heartbeat written again")
        self._stop = asyncio.Event()
        self._status_handle: asyncio.TimerHandle | None = None
        self._status_sent_at = 0.0
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._retake_handle: asyncio.TimerHandle | None = None
        self._walker: asyncio.Task[None] | None = None
        self._rescan_wanted = False
        self._event_pending = False  # changes dispatched: walks let their runs start first
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False

    # -- life cycle -----------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        slow_ms = os.environ.get(SLOW_CALLBACK_ENV)
        if slow_ms:  # asyncio's debug mode logs each callback that held the loop this long
            loop.set_debug(True)
            loop.slow_callback_duration = float(slow_ms) / 1000
        if self.notifier.watchdog_interval:
            self._watchdog()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        reaper.become_subreaper()
        self.ledger.kill_leftovers()
        mypy_tool.servers.enable(self.ledger)  # tool servers live as long as the daemon
        walk_started_ns = time.time_ns()
        # edits made while the walk runs, before their directory's watch: found by ctime,
        # unless every check runs over the whole project at start anyway
        since_ns = (walk_started_ns - CTIME_SLACK_NS
                    if any(not c.run_on_start for c in self.config.checks) else None)
        changed_meanwhile: set[str] = set()
        try:
            if not await self._initial_walk(changed_meanwhile, since_ns):
                return self.exit_code  # stopped meanwhile: a stop never waits for the walk
            loop.add_reader(self.watcher.fileno(), self._on_inotify)
            self.scheduler = Scheduler(self.root, self.config, self._on_result,
                                       self._all_files,
                                       ledger=self.ledger, on_state=self._publish_soon)
            self._heartbeat()
            log.info("watching %s: %d directories, %d checks (%s)", self.root,
                     self.watcher.watch_count, len(self.config.checks),
                     ", ".join(c.name for c in self.config.checks))
            self._settle_deleted_while_away()
            if changed_meanwhile:
                self._dispatch(changed_meanwhile)
            self.scheduler.run_whole(on_start_only=True)
            # before the walk began, changes are what the start-up runs check
            self._synced_at = walk_started_ns / 1e9 - 0.05
            self._publish()
            if self._sync is not None:
                loop.add_reader(self._sync, self._on_sync)
            # last: from READY on, the loop has nothing left to do but wait for events
            self.notifier.ready(self.status_text())
            if self.on_ready is not None:
                self.on_ready()
            await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    def _all_files(self) -> Iterator[str]:
        """For a whole-project run: with rules of its own, as a listing loads each
        .gitignore anew and the watcher's rules must keep what they were (a reload
        compares them with the new ones)."""
        return scan_files(self.root, IgnoreRules(self.root, self.config.ignore))

    async def _initial_walk(self, changes: set[str], since_ns: int | None) -> bool:
        """Place the watches; False when stopped meanwhile."""
        last_extend = 0.0
        try:
            for walked in self.watcher.walk_all(changes, since_ns):
                now = time.monotonic()
                if now - last_extend >= EXTEND_EVERY_S:
                    self.notifier.extend_timeout(EXTEND_BY_S)
                    self.notifier.status(f"walking the project: {self.watcher.watch_count} "
                                         "directories so far")
                    last_extend = now
                await asyncio.sleep(0)
                if self._stop.is_set():
                    log.info("stopped during the initial walk, after %d directories", walked)
                    return False
        except WatchLimitError as exc:
            raise DevloopError(str(exc), EX_OSERR) from None
        return True

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        loop = asyncio.get_running_loop()
        for handle in (self._status_handle, self._heartbeat_handle, self._publish_handle,
                       self._heartbeat_soon_handle, self._retake_handle):
            if handle is not None:
                handle.cancel()
        if self._sync is not None:
            loop.remove_reader(self._sync)
            os.close(self._sync)
            with contextlib.suppress(OSError):
                os.unlink(self.state_dir / results.SYNC_NAME)
        for task in (self._walker, self._reload_task):
            if task is not None:
                task.cancel()
        loop.remove_reader(self.watcher.fileno())
        if self.scheduler is not None:
            await self.scheduler.stop()
        await mypy_tool.servers.stop()
        reaper.reap_orphans()
        self.watcher.close()
        daemon_health.remove_heartbeat(self.state_dir)
        if self.config.health_file is not None:
            daemon_health.remove_heartbeat(self.state_dir, target=self.config.health_file)
        if self.config.metrics_textfile is not None:  # stopped: devloop_up 0, see metrics.py
            from devloop import metrics

            metrics.write_textfile(self.config.metrics_textfile, str(self.root), None)
        self._db(Store.unpublish)
        self.store.close()

    def stop(self, code: int) -> None:
        self.exit_code = code
        self._stop.set()

    # -- events ---------------------------------------------------------------------
    def _on_inotify(self, drain: bool = False) -> None:
        try:
            changes, overflow = self.watcher.read_events(drain)
        except Exception:  # a bug must not cost a change: the rescan finds what it lost
            log.exception("error while reading inotify events: rescanning")
            changes, overflow = set(), True
        if self.watcher.root_gone:
            log.error("the project directory %s was deleted or moved away: exiting", self.root)
            self.stop(EX_NOINPUT)
            return
        if overflow:
            log.warning("inotify queue overflowed: rescanning the project so no change is lost")
            self._rescan_wanted = True
        if changes:
            self._dispatch(changes)
            self._event_pending = True
        self._start_walker()

    def _dispatch(self, changes: set[str], *, recheck_ignored: bool = False) -> None:
        """recheck_ignored: changes from a rescan may lie in what the rules now ignore."""
        if config_mod.CONFIG_NAME in changes or EXCLUDE in changes or any(
            c == ".gitignore" or c.endswith("/.gitignore") for c in changes
        ):
            self._request_reload()
            changes = changes - {EXCLUDE}  # only a rule file: not one of the project's files
        root = str(self.root)  # joined as strings: a storm brings 10,000s of changes
        gone = [c for c in changes if not is_dir_mark(c) and not os.path.lexists(f"{root}/{c}")]
        marks = [c for c in changes if is_dir_mark(c)]
        if marks:  # files may be gone below these that no event named: those with findings
            below: list[str] = []
            self._db(lambda store: below.extend(store.files_with_findings_under(marks)))
            gone += [f for f in below if not os.path.lexists(f"{root}/{f}")]
        had = self._forget(gone) if gone else set()
        if recheck_ignored:
            changes = {c for c in changes if not self.watcher.rules.is_ignored(c, False)}
        if self.scheduler is not None:
            self.scheduler.changed(changes)
            self._publish_soon()
        if gone:  # after the scheduler saw the deletion: the verdict is not stale
            self._settle(gone, had)

    def _forget(self, gone: list[str]) -> set[str]:
        """Forget the findings of files that are gone; returns the checks that had some."""
        had: set[str] = set()
        self._db(lambda store: had.update(store.checks_with_findings(gone)))
        self._write(functools.partial(Store.forget_files, files=gone))
        return had

    def _settle(self, gone: list[str], had: set[str]) -> None:
        """The failures that went with the files gone, each settled as a pass."""
        settled: list[Run] = []
        self._db(lambda store: settled.extend(store.outcomes_gone_with(
            gone, had, lambda f: os.path.lexists(self.root / f))))
        for run in settled:
            self._on_result(run, [], counted=False)

    def _settle_deleted_while_away(self) -> None:
        """Files deleted while no daemon ran: no event tells, and a check that does not run
        at start would keep their findings and failures for good."""
        root = str(self.root)
        known: list[str] = []
        self._db(lambda store: known.extend(store.files_with_findings_under(["/"])))
        gone = [f for f in known if not os.path.lexists(f"{root}/{f}")]
        if gone:
            self._settle(gone, self._forget(gone))

    async def _sliced(self, slices: Iterator[int]) -> bool:
        """Run a walk a slice per turn of the loop; False when stopped meanwhile.

        After an event, the walk skips two turns: a check with debounce_ms = 0 starts its
        process in the first (the scheduler fires it without a timer), before the next slice.
        """
        for _ in slices:
            await asyncio.sleep(0)
            while self._event_pending:
                self._event_pending = False
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            if self._stop.is_set():
                return False
        return True

    def _start_walker(self) -> None:
        if self._walker is None and (self._rescan_wanted or self.watcher.new_dirs):
            self._walker = asyncio.get_running_loop().create_task(self._walk())

    async def _walk(self) -> None:
        """New directories and overflow rescans, walked in slices off the event callback."""
        try:
            while self._rescan_wanted or self.watcher.new_dirs:
                changes: set[str] = set()
                if self._rescan_wanted:
                    self._rescan_wanted = False
                    await self._sliced(self.watcher.rescan(changes))
                    log.info("rescan %d found %d changes", self.watcher.rescans, len(changes))
                else:
                    await self._sliced(self.watcher.walk_new_dirs(changes))
                if changes:
                    self._dispatch(changes, recheck_ignored=True)
        finally:
            self._walker = None
            self._update_status()
            self._answer_sync()

    def _request_reload(self) -> None:
        if self._reload_task is None:
            self._reload_task = asyncio.get_running_loop().create_task(self._reload())
        else:
            self._reload_again = True  # a save during a reload is read once more after it

    async def _reload(self) -> None:
        try:
            self._reload_again = True
            while self._reload_again:
                self._reload_again = False
                await asyncio.sleep(0.05)  # a save of several files is one reload
                await self._reload_once()
        finally:
            self._reload_task = None
            self._answer_sync()

    async def _reload_once(self) -> None:
        self.notifier.reloading()
        try:
            config = config_mod.load(self.root)
        except DevloopError as exc:
            self.config_problem = f"config reload failed, still running the old one: {exc}"
            log.error("%s", self.config_problem)
            self.notifier.ready(self.status_text())
            return
        self.config_problem = None
        self.config = config
        old_rules, self.watcher.rules = self.watcher.rules, IgnoreRules(self.root, config.ignore)
        changes: set[str] = set()
        # watches follow the new rules; files they no longer hide are changes
        await self._sliced(self.watcher.rescan(changes, old_rules))
        added: list[str] = []
        if self.scheduler is not None:
            added = self.scheduler.configure(config)
        names = [c.name for c in config.checks]
        self._db(lambda store: store.forget_checks_except(names))
        self.failing &= set(names)
        self.totals = {k: v for k, v in self.totals.items() if k in names}
        log.info("configuration reloaded: %d checks", len(config.checks))
        self._heartbeat()
        self.notifier.ready(self.status_text())
        if changes:
            self._dispatch(changes - {config_mod.CONFIG_NAME}, recheck_ignored=True)
        if self.scheduler is not None and added:
            self.scheduler.run_whole(on_start_only=True, names=added)

    def _on_result(self, run: Run, findings: list[Finding], *, counted: bool = True) -> None:
        """counted=False: a verdict settled by devloop (its files are gone), not a run."""
        self.last_run = run
        self._save(run, findings, counted=counted)
        totals = self.totals.get(run.check)
        if not self._unsaved and totals is not None:  # the database's verdict (see Store)
            failing = totals.failing_since is not None
        else:
            failing = run.check in self.failing if run.outcome == "cancelled" else (
                run.outcome in FAILING)
        if failing:
            self.failing.add(run.check)
        else:
            self.failing.discard(run.check)
        detail = ""
        if run.outcome == "fail":
            first = (f": {findings[0].file}:{findings[0].line} {findings[0].message}" if findings
                     else f": {run.reason}" if run.reason else "")
            detail = f" (exit {run.exit_code}, {len(findings)} findings{first})"
        elif run.outcome == "error":
            detail = f": {run.output.strip().splitlines()[-1] if run.output.strip() else ''}"
        elif run.reason:
            detail = f": {run.reason}"
        scope = "the whole project" if run.files is None else f"{len(run.files)} files"
        log.log(
            LEVELS[run.outcome], "check %s %s in %.2fs on %s%s", run.check, run.outcome,
            run.duration, scope, detail,
            extra={"DEVLOOP_CHECK": run.check, "DEVLOOP_OUTCOME": run.outcome,
                   "DEVLOOP_DURATION": f"{run.duration:.3f}",
                   "DEVLOOP_EXIT_CODE": "" if run.exit_code is None else str(run.exit_code)},
        )
        self._update_status()
        self._publish_soon()
        self._heartbeat_soon()
        asyncio.get_running_loop().call_soon(self._reap_when_idle)

    def _reap_when_idle(self) -> None:
        """Escaped grandchildren are killed once no check runs (they may be its helpers)."""
        if self.scheduler is not None and not self.scheduler.running:
            reaper.reap_orphans()

    # -- timers ---------------------------------------------------------------------
    def _watchdog(self) -> None:
        self.notifier.watchdog()
        assert self.notifier.watchdog_interval is not None
        asyncio.get_running_loop().call_later(self.notifier.watchdog_interval, self._watchdog)

    def _heartbeat(self) -> None:
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
        if self._state_lost():
            return
        if self.watcher.unwatched:
            self.watcher.retry_unwatched()
            self._start_walker()
        record = daemon_health.heartbeat_record(
            pid=os.getpid(), uptime_seconds=time.monotonic() - self.started,
            interval_seconds=self.config.heartbeat_interval, project=str(self.root),
            watches=self.watcher.watch_count, rescans=self.watcher.rescans,
            overflows=self.watcher.overflows,
            problem=self.problem(),
            checks={c.name: self._check_record(c.name) for c in self.config.checks},
        )
        health, where = self.config.health_file, self.state_dir
        self._heartbeat_at = time.monotonic()
        try:
            daemon_health.write_heartbeat(self.state_dir, record)
            if health is not None:  # published for a monitoring user (its directory's group)
                where = health.parent
                daemon_health.write_heartbeat(self.state_dir, record, mode=0o640, target=health)
        except OSError as exc:
            self.heartbeat_trouble.report(
                f"cannot write the heartbeat in {where}: {exc.strerror}")
        else:
            self.heartbeat_trouble.clear()
        if self._unsaved:
            self._flush()
        if self.config.metrics_textfile is not None:
            from devloop import metrics  # only where configured: prometheus_client is 3 MB

            metrics.write_textfile(self.config.metrics_textfile, str(self.root),
                                   record)  # logs its errors
        self._heartbeat_handle = asyncio.get_running_loop().call_later(
            self.config.heartbeat_interval, self._heartbeat)

    # -- the project or .devloop deleted --------------------------------------------
    def _state_lost(self) -> bool:
        """True once the project is gone (exit 66). A deleted `.devloop` is taken back a
        moment later, so a `rm -rf` of the whole project still in progress is not
        refilled (its rmdir would fail); the lock is retaken or this daemon exits 75."""
        if statedir.project_gone(self.root):
            log.error("the project directory %s was deleted or replaced: exiting", self.root)
            self.stop(EX_NOINPUT)
            return True
        if statedir.lock_lost(self.state_dir) and self._retake_handle is None:
            log.warning("%s was deleted or replaced: recreating it", self.state_dir)
            self._retake_handle = asyncio.get_running_loop().call_later(
                RETAKE_DELAY_S, self._retake_state)
        return False

    def _retake_state(self) -> None:
        self._retake_handle = None
        if statedir.project_gone(self.root):
            self._state_lost()
            return
        try:
            statedir.retake(self.root)
            self.store.close()
            self.store = Store.open(self.state_dir, busy_timeout=DB_BUSY_TIMEOUT_S)
        except DevloopError as exc:
            if isinstance(exc, statedir.UnsafeStateError) or exc.code == EX_TEMPFAIL:
                log.error("%s: exiting", exc.message)  # refused, or another daemon took it
                self.stop(exc.code)
            else:
                # e.g. the unit's sandbox, where the project is read-only: a restart by the
                # service manager recreates .devloop (ExecStartPre=) writable again
                log.error("%s: exiting so that a new daemon starts afresh", exc.message)
                self.stop(EX_IOERR)
            return
        except (sqlite3.Error, OSError) as exc:
            log.error("cannot recreate the results database in %s: %s: exiting",
                      self.state_dir, exc)
            self.stop(EX_CANTCREAT)
            return
        loop = asyncio.get_running_loop()
        if self._sync is not None:
            loop.remove_reader(self._sync)
            os.close(self._sync)
        self._sync = self._open_sync()
        if self._sync is not None:
            loop.add_reader(self._sync, self._on_sync)
        log.info("recreated %s with a new lock and results database", self.state_dir)
        self._heartbeat()

    def _check_record(self, name: str) -> dict[str, Any]:
        """A check in the heartbeat: counters and streaks from the database, so they hold
        across restarts, and its live state."""
        t = self.totals.get(name, CheckTotals(runs={}, last_success=None, failing_since=None))
        live = self._live.get(name)
        last = self.last_duration.get(name)
        return {"runs": t.runs, "last_duration_seconds": last,
                "last_success_timestamp": t.last_success, "failing": name in self.failing,
                "failing_since": t.failing_since if name in self.failing else None,
                "state": live.state if live is not None else "idle"}

    def _heartbeat_soon(self) -> None:
        """After a result: the heartbeat (and metrics) now, or a second after the last."""
        if self._heartbeat_soon_handle is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._heartbeat_at + HEARTBEAT_MIN_INTERVAL_S - time.monotonic()
        self._heartbeat_soon_handle = loop.call_later(max(wait, 0.0), self._heartbeat_now)

    def _heartbeat_now(self) -> None:
        self._heartbeat_soon_handle = None
        self._heartbeat()

    # -- published state (devloop.results reads it) ----------------------------------
    def _publish_soon(self) -> None:
        """Once this turn of the loop is over: a run that just ended has left its task."""
        if self._publish_handle is None:
            self._publish_handle = asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._publish_handle = None
        if self.scheduler is None or self._unsaved or self._stop.is_set():
            return  # results first: a reader must not see "idle" before the result
        now = time.time()
        live = {}
        for name, (state, changed_at) in self.scheduler.states().items():
            old = self._live.get(name)
            since = old.since if old is not None and old.state == state else now
            live[name] = LiveState(state=state, since=since, changed_at=changed_at)
        self._live = live
        synced = self._synced_at
        self._db(lambda store: store.publish(live, pid=os.getpid(), started=self.started_at,
                                             synced_at=synced))

    def _open_sync(self) -> int | None:
        try:
            return results.open_sync_fifo(self.state_dir)
        except OSError as exc:
            log.error("cannot make %s: status --wait cannot ask for the latest changes: %s",
                      self.state_dir / results.SYNC_NAME, exc.strerror)
            return None

    def _on_sync(self) -> None:
        """A waiter wrote to `.devloop/sync`: read every change queued before, then say so."""
        assert self._sync is not None
        try:
            while os.read(self._sync, 4096):
                pass
        except BlockingIOError:
            pass
        asked = time.time()
        self._on_inotify(drain=True)
        self._sync_asked = asked
        self._answer_sync()

    def _answer_sync(self) -> None:
        """Walks of new directories and reloads may still find changes: answer after them."""
        if self._sync_asked is None or self._walker is not None or self._reload_task is not None:
            return
        self._synced_at, self._sync_asked = self._sync_asked, None
        self._publish()

    def _save(self, run: Run, findings: list[Finding], *, counted: bool = True) -> None:
        if counted:
            self.last_duration[run.check] = round(run.duration, 4)
        self._write(functools.partial(Store.record, run=run, findings=findings,
                                      counted=counted))

    def _write(self, write: Callable[[Store], object]) -> None:
        """Writes are done in order; those the database refuses wait in memory for a retry."""
        self._unsaved.append(write)
        if len(self._unsaved) > MAX_UNSAVED:
            self._unsaved.popleft()
            log.error("more than %d results could not be saved: dropping the oldest",
                      MAX_UNSAVED)
        self._flush()

    def _flush(self) -> None:
        saved = False
        while self._unsaved:
            if not self._db(self._unsaved[0]):
                if self._flush_handle is None:
                    self._flush_handle = asyncio.get_running_loop().call_later(
                        DB_RETRY_S, self._retry_flush)
                return
            self._unsaved.popleft()
            saved = True
        if saved:
            self._db(lambda store: self.totals.update(store.totals()))
            self._publish_soon()

    def _retry_flush(self) -> None:
        self._flush_handle = None
        self._flush()

    def _db(self, write: Callable[[Store], object]) -> bool:
        """A database write; a failure is logged once and the daemon keeps watching.

        A database that turns out corrupt is moved aside and started afresh, once.
        """
        problem = ""
        for attempt in (1, 2):
            try:
                write(self.store)
            except sqlite3.OperationalError as exc:  # locked, disk full, read-only
                problem = f"cannot write results to {self.state_dir}: {exc}"
            except sqlite3.DatabaseError as exc:
                problem = f"results database in {self.state_dir} failed: {exc}"
                if attempt == 1:
                    log.error("%s: reopening it", problem)
                    self.store.close()
                    try:
                        self.store = Store.open(self.state_dir, busy_timeout=DB_BUSY_TIMEOUT_S)
                    except (sqlite3.Error, OSError, DevloopError) as exc2:
                        problem = f"cannot reopen the results database: {exc2}"
                    else:
                        continue
            except OSError as exc:
                problem = f"cannot write results to {self.state_dir}: {exc.strerror}"
            except (ValueError, TypeError):  # a value SQLite can never take: a bug of ours
                # dropped, not retried: it would hold back every write after it for good
                log.exception("a result the database cannot hold was dropped")
                return True
            else:
                if self.db_trouble.clear():
                    self._update_status()
                return True
            break
        if self.db_trouble.report(problem):
            self._update_status()
        return False

    # -- status ---------------------------------------------------------------------
    def problem(self) -> str | None:
        return (self.watcher.problem or self.db_trouble.problem or self.heartbeat_trouble.problem
                or self.config_problem)

    def status_text(self) -> str:
        parts = [f"watching {self.watcher.watch_count:,} dirs",
                 f"{len(self.config.checks)} checks"]
        if self.last_run is not None:
            r = self.last_run
            parts.append(f"last {r.check} {r.outcome} {r.duration:.2f}s")
        parts.append(f"{len(self.failing)} failing")
        if self.scheduler is not None and self.scheduler.loops:
            parts.append(f"self-triggering: {', '.join(self.scheduler.loops)}")
        problem = self.problem()
        if problem:
            parts.append(f"PROBLEM: {problem}")
        return ", ".join(parts)

    def _update_status(self) -> None:
        """STATUS= at most a few times a second: the last state wins."""
        if not self.notifier.enabled or self._status_handle is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._status_sent_at + STATUS_MIN_INTERVAL_S - loop.time()
        self._status_handle = loop.call_later(max(wait, 0), self._send_status)

    def _send_status(self) -> None:
        self._status_handle = None
        self._status_sent_at = asyncio.get_running_loop().time()
        self.notifier.status(self.status_text())
