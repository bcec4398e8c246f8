"""Which checks a change triggers, and when they run.

Per check: a trailing debounce (a burst of saves is one run, capped so a file
that never stops changing still gets checked), at most one run in flight, and
`on_busy`: "queue" keeps one coalesced rerun, "restart" cancels the running one.
Across checks: at most `max_parallel` run at once.

A check that rewrites the files it watches would trigger itself forever. When
LOOP_RUNS runs in a row were each triggered only by the same files, changed
while the check itself was running, it is declared a loop: changes that arrive
during its runs no longer trigger it (and are logged), changes made while it
is idle still do, and those end the loop state.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devloop.config import Check, Config
from devloop.findings import Finding
from devloop.reaper import GroupLedger
from devloop.runner import CheckRun
from devloop.store import Run

log = logging.getLogger(__name__)

MAX_WAIT_S = 5.0  # a debounce never delays a run longer than this
LOOP_RUNS = 10
RUN_TAIL_S = 0.25  # a change seen this soon after a run ended may still be the run's own

ResultHandler = Callable[[Run, list[Finding]], None]


@dataclass(eq=False)
class _State:
    check: Check
    pending: set[str] = field(default_factory=set)
    whole: bool = False  # a run of the whole project is pending
    first_change: float | None = None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    current: CheckRun | None = None
    changed_while_running: set[str] = field(default_factory=set)
    last_trigger: frozenset[str] = frozenset()
    self_streak: int = 0
    ended_at: float = float("-inf")
    looping: frozenset[str] = frozenset()  # files of a detected self-trigger loop


class Scheduler:
    def __init__(
        self,
        root: Path,
        config: Config,
        on_result: ResultHandler,
        all_files: Callable[[], Iterable[str]],
        environ: Mapping[str, str] | None = None,
        ledger: GroupLedger | None = None,
    ) -> None:
        self.root = root
        self.ledger = ledger
        self.on_result = on_result
        self.all_files = all_files
        self.environ = dict(os.environ if environ is None else environ)
        self._states: dict[str, _State] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take a new config: removed checks are cancelled, changed ones take effect next run."""
        self._sem = asyncio.Semaphore(config.max_parallel)
        old = self._states
        self._states = {}
        for check in config.checks:
            state = old.pop(check.name, None) or _State(check)
            state.check = check
            self._states[check.name] = state
        for state in old.values():
            self._cancel(state)

    @property
    def checks(self) -> list[Check]:
        return [s.check for s in self._states.values()]

    @property
    def busy(self) -> bool:
        return any(
            s.task is not None or s.timer is not None or s.pending or s.whole
            for s in self._states.values()
        )

    @property
    def loops(self) -> dict[str, frozenset[str]]:
        """Checks caught re-triggering themselves, with the files they keep writing."""
        return {name: s.looping for name, s in self._states.items() if s.looping}

    @property
    def running(self) -> bool:
        return any(s.task is not None for s in self._states.values())

    def changed(self, paths: Iterable[str]) -> int:
        """Note changed paths; returns how many checks they trigger."""
        paths = list(paths)
        triggered = 0
        for state in self._states.values():
            matched = [p for p in paths if state.check.matches(p)]
            if not matched:
                continue
            now = asyncio.get_running_loop().time()
            if state.current is not None or now - state.ended_at < RUN_TAIL_S:
                state.changed_while_running.update(matched)
                if state.looping and state.looping.issuperset(matched):
                    continue  # its own writes: see the module docstring
            else:
                state.self_streak = 0
                if state.looping:
                    log.info("check %s: changed while idle, watching it again",
                             state.check.name)
                    state.looping = frozenset()
            if matched:
                state.pending.update(matched)
                self._arm(state)
                triggered += 1
        return triggered

    def run_whole(self, *, on_start_only: bool) -> None:
        """Run checks over the whole project (at start-up, or `devloop run`)."""
        for state in self._states.values():
            if on_start_only and not state.check.run_on_start:
                continue
            state.whole = True
            self._arm(state, now=True)

    async def wait_idle(self) -> None:
        while self.busy:
            tasks = [s.task for s in self._states.values() if s.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            else:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Cancel every timer and run; returns when every check's process group is gone."""
        tasks = []
        for state in self._states.values():
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            state.pending.clear()
            state.whole = False
            if state.task is not None:
                state.task.cancel()
                tasks.append(state.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals ------------------------------------------------------------------
    def _arm(self, state: _State, *, now: bool = False) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        if state.first_change is None:
            state.first_change = t
        if state.timer is not None:
            state.timer.cancel()
        delay = 0.0 if now else state.check.debounce_ms / 1000
        when = min(t + delay, state.first_change + MAX_WAIT_S)
        state.timer = loop.call_at(when, self._fire, state)

    def _fire(self, state: _State) -> None:
        state.timer = None
        if state.task is None:
            state.first_change = None
            state.task = asyncio.get_running_loop().create_task(self._run(state))
        elif state.check.on_busy == "restart" and state.current is not None:
            state.current.cancel()
        # "queue": the running task starts one more run when it ends.

    def _cancel(self, state: _State) -> None:
        if state.timer is not None:
            state.timer.cancel()
        if state.task is not None:
            state.task.cancel()

    def _take(self, state: _State) -> tuple[list[str], bool] | None:
        """The files for the next run, or None when there is nothing to run it on."""
        whole, pending = state.whole, state.pending
        state.whole, state.pending = False, set()
        check = state.check
        if whole:
            files = sorted(f for f in self.all_files() if check.matches(f))
            if check.takes_files and not files:
                return None
            return files, True
        existing = sorted(p for p in pending if os.path.lexists(self.root / p))
        if check.takes_files and not existing:
            return None  # only deletions: the caller already dropped their findings
        return existing, False

    def _detect_loop(self, state: _State) -> None:
        trigger = frozenset(state.pending)
        own = bool(trigger) and not state.whole and trigger <= state.changed_while_running
        if own and trigger == state.last_trigger:
            state.self_streak += 1
        else:
            state.self_streak = 1 if own else 0
        state.last_trigger = trigger
        state.changed_while_running = set()
        if state.self_streak >= LOOP_RUNS and not state.looping:
            state.looping = trigger
            state.pending.clear()
            log.warning(
                "check %s keeps changing the files it checks (%s): %d runs in a row were "
                "triggered by its own writes; changes made while it runs no longer trigger it",
                state.check.name, ", ".join(sorted(trigger)[:5]), state.self_streak)

    async def _run(self, state: _State) -> None:
        try:
            while True:
                async with self._sem:
                    taken = self._take(state)
                    if taken is None:
                        break
                    files, whole = taken
                    state.current = CheckRun(state.check, self.root, files, whole=whole,
                                             environ=self.environ, ledger=self.ledger)
                    try:
                        run, findings = await state.current.run()
                    finally:
                        state.current = None
                        state.ended_at = asyncio.get_running_loop().time()
                if run.outcome == "cancelled":
                    if whole:
                        state.whole = True
                    else:
                        state.pending.update(files)
                self._detect_loop(state)
                self.on_result(run, findings)
                if not (state.pending or state.whole) or state.timer is not None:
                    break  # nothing queued, or a debounce timer will start the next run
        finally:
            state.task = None
