"""The loop that ties the rooms together: start, watch, run, reload, stop.

One thread, one asyncio loop. The inotify fd, child processes, timers
(watchdog ping, heartbeat, debounce) and signals are all callbacks on it, so
the watchdog ping proves that this loop, and nothing else, is alive.
"""

from __future__ import annotations

import asyncio
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
from devloop import reaper
from devloop.config import Config
from devloop.core import daemon_health
from devloop.errors import EX_CANTCREAT, EX_NOINPUT, EX_OK, EX_OSERR, DevloopError
from devloop.findings import Finding
from devloop.ignore import IgnoreRules
from devloop.scheduler import Scheduler
from devloop.store import Run, Store
from devloop.systemd import Notifier
from devloop.watcher import Watcher, WatchLimitError

log = logging.getLogger("devloop")

STATUS_MIN_INTERVAL_S = 0.25
DB_BUSY_TIMEOUT_S = 0.2  # the loop never waits longer for a lock held by another process
DB_RETRY_S = 1.0
MAX_UNSAVED = 10_000
EXTEND_EVERY_S = 1.0  # during the initial walk, ask systemd for more start time this often
EXTEND_BY_S = 10.0
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
        try:
            self.store = Store.open(state_dir, busy_timeout=DB_BUSY_TIMEOUT_S)
        except (sqlite3.Error, OSError) as exc:
            raise DevloopError(f"cannot open the results database in {state_dir}: {exc}",
                               EX_CANTCREAT) from None
        self._unsaved: deque[tuple[Run, list[Finding]]] = deque()
        self._flush_handle: asyncio.TimerHandle | None = None
        self.ledger = reaper.GroupLedger(state_dir)
        self.watcher = Watcher(root, IgnoreRules(root, config.ignore))
        self.scheduler: Scheduler | None = None
        self.exit_code = EX_OK
        self.last_run: Run | None = None
        self.failing: set[str] = set()
        self.check_stats: dict[str, dict[str, Any]] = {}  # for the heartbeat and metrics
        self.config_problem: str | None = None
        self.db_problem: str | None = None
        self.heartbeat_problem: str | None = None
        self._stop = asyncio.Event()
        self._status_handle: asyncio.TimerHandle | None = None
        self._status_sent_at = 0.0
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._walker: asyncio.Task[None] | None = None
        self._rescan_wanted = False
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_again = False

    # -- life cycle -----------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.notifier.watchdog_interval:
            self._watchdog()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        reaper.become_subreaper()
        self.ledger.kill_leftovers()
        walk_started_ns = time.time_ns()  # mtimes are compared with it, less 50 ms (coarse)
        try:
            await self._initial_walk()
            loop.add_reader(self.watcher.fileno(), self._on_inotify)
            self.scheduler = Scheduler(self.root, self.config, self._on_result,
                                       self.watcher.all_files, ledger=self.ledger)
            self._heartbeat()
            log.info("watching %s: %d directories, %d checks (%s)", self.root,
                     self.watcher.watch_count, len(self.config.checks),
                     ", ".join(c.name for c in self.config.checks))
            self.notifier.ready(self.status_text())
            if self.on_ready is not None:
                self.on_ready()
            changed_meanwhile: set[str] = set()
            await self._sliced(self.watcher.fill_snapshot(walk_started_ns - 50_000_000,
                                                          changed_meanwhile))
            if changed_meanwhile:
                self._dispatch(changed_meanwhile)
            self.scheduler.run_whole(on_start_only=True)
            await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    async def _initial_walk(self) -> None:
        last_extend = 0.0
        try:
            for _ in self.watcher.walk_all(strict=True):
                now = time.monotonic()
                if now - last_extend >= EXTEND_EVERY_S:
                    self.notifier.extend_timeout(EXTEND_BY_S)
                    self.notifier.status(f"walking the project: {self.watcher.watch_count} "
                                         "directories so far")
                    last_extend = now
                await asyncio.sleep(0)
        except WatchLimitError as exc:
            raise DevloopError(str(exc), EX_OSERR) from None

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping")
        loop = asyncio.get_running_loop()
        for handle in (self._status_handle, self._heartbeat_handle):
            if handle is not None:
                handle.cancel()
        for task in (self._walker, self._reload_task):
            if task is not None:
                task.cancel()
        loop.remove_reader(self.watcher.fileno())
        if self.scheduler is not None:
            await self.scheduler.stop()
        reaper.reap_orphans()
        self.watcher.close()
        daemon_health.remove_heartbeat(self.state_dir)
        if self.config.health_file is not None:
            daemon_health.remove_heartbeat(self.state_dir, target=self.config.health_file)
        if self.config.metrics_textfile is not None:  # stopped: devloop_up 0, see metrics.py
            from devloop import metrics

            metrics.write_textfile(self.config.metrics_textfile, str(self.root), None)
        self.store.close()

    def stop(self, code: int) -> None:
        self.exit_code = code
        self._stop.set()

    # -- events ---------------------------------------------------------------------
    def _on_inotify(self) -> None:
        try:
            changes, overflow = self.watcher.read_events()
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
        self._start_walker()

    def _dispatch(self, changes: set[str], *, recheck_ignored: bool = False) -> None:
        """recheck_ignored: changes from a rescan may lie in what the rules now ignore."""
        if config_mod.CONFIG_NAME in changes or any(
            c == ".gitignore" or c.endswith("/.gitignore") for c in changes
        ):
            self._request_reload()
        gone = [c for c in changes if not os.path.lexists(self.root / c)]
        if gone:
            self._db(lambda store: store.forget_files(gone))
        if recheck_ignored:
            changes = {c for c in changes if not self.watcher.rules.is_ignored(c, False)}
        if self.scheduler is not None:
            self.scheduler.changed(changes)

    async def _sliced(self, slices: Iterator[int]) -> None:
        for _ in slices:
            await asyncio.sleep(0)

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
        self.watcher.rules = IgnoreRules(self.root, config.ignore)
        changes: set[str] = set()
        await self._sliced(self.watcher.rescan(changes))  # watches follow the new rules
        added: list[str] = []
        if self.scheduler is not None:
            added = self.scheduler.configure(config)
        names = [c.name for c in config.checks]
        self._db(lambda store: store.forget_checks_except(names))
        self.failing &= set(names)
        log.info("configuration reloaded: %d checks", len(config.checks))
        self._heartbeat()
        self.notifier.ready(self.status_text())
        if changes:
            self._dispatch(changes - {config_mod.CONFIG_NAME}, recheck_ignored=True)
        if self.scheduler is not None and added:
            self.scheduler.run_whole(on_start_only=True, names=added)

    def _on_result(self, run: Run, findings: list[Finding]) -> None:
        self.last_run = run
        stats = self.check_stats.setdefault(
            run.check, {"runs": {}, "last_duration_seconds": None, "last_success_timestamp": None}
        )
        stats["runs"][run.outcome] = stats["runs"].get(run.outcome, 0) + 1
        stats["last_duration_seconds"] = round(run.duration, 4)
        if run.outcome == "pass":
            stats["last_success_timestamp"] = round(run.started + run.duration, 3)
        if run.outcome in ("fail", "error", "timeout"):
            self.failing.add(run.check)
        elif run.outcome == "pass":
            self.failing.discard(run.check)
        self._save(run, findings)
        detail = ""
        if run.outcome == "fail":
            first = f": {findings[0].file}:{findings[0].line} {findings[0].message}" if findings \
                else ""
            detail = f" (exit {run.exit_code}, {len(findings)} findings{first})"
        elif run.outcome == "error":
            detail = f": {run.output.strip().splitlines()[-1] if run.output.strip() else ''}"
        scope = "the whole project" if run.files is None else f"{len(run.files)} files"
        log.log(
            LEVELS[run.outcome], "check %s %s in %.2fs on %s%s", run.check, run.outcome,
            run.duration, scope, detail,
            extra={"DEVLOOP_CHECK": run.check, "DEVLOOP_OUTCOME": run.outcome,
                   "DEVLOOP_DURATION": f"{run.duration:.3f}",
                   "DEVLOOP_EXIT_CODE": "" if run.exit_code is None else str(run.exit_code)},
        )
        self._update_status()
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
        if self.watcher.unwatched:
            self.watcher.retry_unwatched()
            self._start_walker()
        record = daemon_health.heartbeat_record(
            pid=os.getpid(), uptime_seconds=time.monotonic() - self.started,
            interval_seconds=self.config.heartbeat_interval, project=str(self.root),
            watches=self.watcher.watch_count, rescans=self.watcher.rescans,
            problem=self.problem(),
            checks={c.name: {**self.check_stats.get(c.name, {
                "runs": {}, "last_duration_seconds": None, "last_success_timestamp": None}),
                "failing": c.name in self.failing} for c in self.config.checks},
        )
        health, where = self.config.health_file, self.state_dir
        try:
            daemon_health.write_heartbeat(self.state_dir, record)
            if health is not None:  # published for a monitoring user (its directory's group)
                where = health.parent
                daemon_health.write_heartbeat(self.state_dir, record, mode=0o640, target=health)
        except OSError as exc:
            problem = f"cannot write the heartbeat in {where}: {exc.strerror}"
            if problem != self.heartbeat_problem:
                log.error("%s", problem)
            self.heartbeat_problem = problem
        else:
            if self.heartbeat_problem:
                log.info("heartbeat written again")
            self.heartbeat_problem = None
        if self._unsaved:
            self._flush()
        if self.config.metrics_textfile is not None:
            from devloop import metrics  # only where configured: prometheus_client is 3 MB

            metrics.write_textfile(self.config.metrics_textfile, str(self.root),
                                   record)  # logs its errors
        self._heartbeat_handle = asyncio.get_running_loop().call_later(
            self.config.heartbeat_interval, self._heartbeat)

    def _save(self, run: Run, findings: list[Finding]) -> None:
        """Runs are saved in order; those the database refuses wait in memory for a retry."""
        self._unsaved.append((run, findings))
        if len(self._unsaved) > MAX_UNSAVED:
            self._unsaved.popleft()
            log.error("more than %d runs could not be saved: dropping the oldest", MAX_UNSAVED)
        self._flush()

    def _flush(self) -> None:
        while self._unsaved:
            run, findings = self._unsaved[0]
            if not self._db(functools.partial(Store.record, run=run, findings=findings)):
                if self._flush_handle is None:
                    self._flush_handle = asyncio.get_running_loop().call_later(
                        DB_RETRY_S, self._retry_flush)
                return
            self._unsaved.popleft()

    def _retry_flush(self) -> None:
        self._flush_handle = None
        self._flush()

    def _db(self, write: Callable[[Store], object]) -> bool:
        """A database write; a failure is logged once and the daemon keeps watching.

        A database that turns out corrupt is moved aside and started afresh, once.
        """
        problem = None
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
                    except (sqlite3.Error, OSError) as exc2:
                        problem = f"cannot reopen the results database: {exc2}"
                    else:
                        continue
            except OSError as exc:
                problem = f"cannot write results to {self.state_dir}: {exc.strerror}"
            else:
                if self.db_problem:
                    log.info("results database writable again")
                    self.db_problem = None
                    self._update_status()
                return True
            break
        if problem != self.db_problem:
            log.error("%s", problem)
            self.db_problem = problem
            self._update_status()
        return False

    # -- status ---------------------------------------------------------------------
    def problem(self) -> str | None:
        return (self.watcher.problem or self.db_problem or self.heartbeat_problem
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
