"""Which checks a change triggers, and when they run.

Per check: a trailing debounce (a burst of saves is one run, capped so a file
that never stops changing still gets checked), at most one run in flight, and
`on_busy`: "queue" keeps one coalesced rerun, "restart" cancels the running one.
Across checks: at most `max_parallel` run at once.

A check that rewrites the files it watches would trigger itself forever. When
LOOP_RUNS runs in a row were each triggered only by the same files, changed
while the check itself was running, it is declared a loop. From then on, changes
to those files made while it runs (or in the RUN_TAIL_S after) are held back: after
the run (at once, for the tail), they trigger one more run LOOP_BACKOFF_S later, and
only if the files' content differs from what that run saw (a check rewriting the same
bytes stops at once). A change made
while the check is idle runs it as usual and ends the loop state. So a loop
costs at most one run every LOOP_BACKOFF_S, and no save is ever left unchecked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devloop import tools
from devloop.config import Check, Config
from devloop.findings import Finding
from devloop.reaper import GroupLedger
from devloop.runner import CheckRun
from devloop.store import Run, State
from devloop.watcher import SLICE_S, is_dir_mark

log = logging.getLogger(__name__)

MAX_WAIT_S = 10.0  # a pending change never waits longer than this for its run
QUEUE_SETTLE_S = 0.05  # a queued rerun waits until changes pause this long (a storm: 2 runs)
LOOP_RUNS = 10
LOOP_BACKOFF_S = 30.0
RUN_TAIL_S = 0.25  # a change seen this soon after a run ended may still be the run's own

ResultHandler = Callable[[Run, list[Finding]], None]


@dataclass(eq=False)
class _State:
    check: Check
    adapter: tools.Adapter  # found with the config, not on the way from a save to its run
    pending: set[str] = field(default_factory=set)
    whole: bool = False  # a run of the whole project is pending
    first_change: float | None = None  # of the current debounce window
    last_change: float = 0.0
    pending_since: float | None = None
    settling: bool = False  # a queued rerun waits for the changes to pause
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    current: CheckRun | None = None
    changed_while_running: set[str] = field(default_factory=set)
    last_trigger: frozenset[str] = frozenset()
    self_streak: int = 0
    ended_at: float = float("-inf")
    looping: frozenset[str] = frozenset()  # files of a detected self-trigger loop
    held: set[str] = field(default_factory=set)  # their changes made during a run
    stale: set[str] = field(default_factory=set)  # held ones that differ: the backoff runs them
    seen: dict[str, bytes | None] = field(default_factory=dict)  # their digests at run start
    backoff: asyncio.TimerHandle | None = None
    changed_at: float | None = None  # unix time of the last change that triggered it


def _digest(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "blake2b").digest()
    except OSError:
        return None


async def _select(items: Iterable[str], keep: Callable[[str], bool]) -> list[str]:
    """The items keep() accepts, sorted; the loop runs other callbacks every SLICE_S.

    It yields between items only: selecting the one file of a save's run, however slow
    (the process preempted), must not let the daemon's bookkeeping go before the run.
    """
    kept = []
    slice_end = time.perf_counter() + SLICE_S
    for n, item in enumerate(items):
        if n and time.perf_counter() >= slice_end:
            await asyncio.sleep(0)
            slice_end = time.perf_counter() + SLICE_S
        if keep(item):
            kept.append(item)
    kept.sort()
    return kept


class Scheduler:
    def __init__(
        self,
        root: Path,
        config: Config,
        on_result: ResultHandler,
        all_files: Callable[[], Iterable[str]],
        environ: Mapping[str, str] | None = None,
        ledger: GroupLedger | None = None,
        on_state: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.on_state = on_state  # a run began, or a check's task ended (see states())
        self.ledger = ledger
        self.on_result = on_result
        self.all_files = all_files
        self.environ = dict(os.environ if environ is None else environ)
        self._states: dict[str, _State] = {}
        self._max_parallel = config.max_parallel
        self._sem = asyncio.Semaphore(config.max_parallel)
        self.configure(config)

    def configure(self, config: Config) -> list[str]:
        """Take a new config: removed checks are cancelled, changed ones take effect next run.

        Returns the names of the checks that are new.
        """
        if self._max_parallel != config.max_parallel:
            # runs holding the old semaphore finish with it: briefly, more may run at once
            self._max_parallel = config.max_parallel
            self._sem = asyncio.Semaphore(config.max_parallel)
        old = self._states
        self._states = {}
        added = []
        for check in config.checks:
            adapter = tools.adapter_for(check)  # imported now, not on the first run (14 ms)
            state = old.pop(check.name, None)
            if state is None:
                state = _State(check, adapter)
                added.append(check.name)
            state.check, state.adapter = check, adapter
            self._states[check.name] = state
        for state in old.values():
            self._cancel(state)
        return added

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

    def states(self) -> dict[str, tuple[State, float | None]]:
        """Per check: "running", "queued" (a change or a run waits) or "idle", and when the
        last change that triggers it was seen (unix time; None: none since the start)."""
        out: dict[str, tuple[State, float | None]] = {}
        for name, s in self._states.items():
            state: State
            if s.current is not None:
                state = "running"
            elif (s.task is not None or s.timer is not None or s.backoff is not None
                  or s.pending or s.whole):
                state = "queued"
            else:
                state = "idle"
            out[name] = (state, s.changed_at)
        return out

    @property
    def running(self) -> bool:
        return any(s.task is not None for s in self._states.values())

    def changed(self, paths: Iterable[str]) -> None:
        """Note changed paths: the checks they match are armed."""
        paths = list(paths)
        for state in self._states.values():
            # a directory's mark (files gone below it, unnamed) arms the checks that read
            # the whole project: a check given files has none to run on
            matched = [p for p in paths if (not state.check.takes_files if is_dir_mark(p)
                                            else state.check.matches(p))]
            if not matched:
                continue
            now = asyncio.get_running_loop().time()
            if state.current is not None or now - state.ended_at < RUN_TAIL_S:
                state.changed_while_running.update(matched)
                if state.looping and state.looping.issuperset(matched):
                    state.held.update(matched)  # its own writes? see the module docstring
                    if state.current is None:
                        self._hold_back(state)  # the run has ended: no later pass takes them
                    continue
            else:
                state.self_streak = 0
                if state.looping:
                    log.info("check %s: changed while idle, watching it again",
                             state.check.name)
                    state.looping = frozenset()
                    if state.backoff is not None:
                        state.backoff.cancel()
                        state.backoff = None
                    matched += sorted(state.stale - set(matched))  # they run now instead
                    state.stale = set()
            if state.pending_since is None:
                state.pending_since = now
            state.last_change = now
            state.changed_at = time.time()
            state.pending.update(matched)
            self._arm(state)

    def run_whole(self, *, on_start_only: bool, names: list[str] | None = None) -> None:
        """Run checks (all, or those named) over the whole project (start-up, `devloop run`)."""
        for state in self._states.values():
            if names is not None and state.check.name not in names:
                continue
            if on_start_only and not state.check.run_on_start:
                continue
            state.whole = True
            state.changed_at = time.time()  # what changed before is unknown: rerun it all
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
            for handle in (state.timer, state.backoff):
                if handle is not None:
                    handle.cancel()
            state.timer = state.backoff = None
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
        if state.settling and not now:  # still the storm that queued a rerun: keep waiting
            since = state.pending_since if state.pending_since is not None else t
            when = min(max(when, t + QUEUE_SETTLE_S), since + MAX_WAIT_S)
        if when <= t:
            # due now (debounce_ms = 0): a timer would cost a turn of the loop, and let what
            # else this turn queued (the published state, a database write) go before the
            # run; changes read later in this turn still join it (its task takes them).
            self._fire(state)
            return
        state.timer = loop.call_at(when, self._fire, state)

    def _settle(self, state: _State) -> bool:
        """Hold a queued rerun until the changes pause: a storm of writes is two runs, the
        one it started and one after it. Returns whether a timer now holds it."""
        if state.whole:
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = state.pending_since if state.pending_since is not None else now
        quiet = max(QUEUE_SETTLE_S, state.check.debounce_ms / 1000)
        ready_at = min(state.last_change + quiet, since + MAX_WAIT_S)
        if ready_at <= now:
            return False
        state.timer = loop.call_at(ready_at, self._fire, state)
        state.settling = True
        return True

    def _fire(self, state: _State) -> None:
        state.timer = None
        if state.settling:
            state.settling = False
            # events read in this same turn of the loop (they come before timers) may
            # show that the storm goes on: then keep waiting
            if state.task is None and self._settle(state):
                return
        state.first_change = None  # the next change starts a new debounce window
        if state.task is None:
            state.task = asyncio.get_running_loop().create_task(self._run(state))
        elif state.check.on_busy == "restart" and state.current is not None:
            state.current.cancel()
        # "queue": the running task starts one more run when it ends.

    def _cancel(self, state: _State) -> None:
        for handle in (state.timer, state.backoff):
            if handle is not None:
                handle.cancel()
        if state.task is not None:
            state.task.cancel()

    async def _take(self, state: _State) -> tuple[list[str], bool] | None:
        """The files for the next run, or None when there is nothing to run it on.

        Sliced: the whole project, or a storm's pending set, is 10,000s of files.
        """
        whole, pending = state.whole, state.pending
        state.whole, state.pending, state.pending_since = False, set(), None
        check = state.check
        if whole:
            files = await _select(self.all_files(), check.matches)
            if check.takes_files and not files:
                return None
            return files, True
        root = str(self.root)  # joined as strings, faster than pathlib
        existing = await _select(pending, lambda p: not is_dir_mark(p)
                                 and os.path.lexists(f"{root}/{p}"))
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
            log.warning(
                "check %s keeps changing the files it checks (%s): %d runs in a row were "
                "triggered by changes made while it ran; such changes now run it again only "
                "after %gs, and only if the content differs from what it checked",
                state.check.name, ", ".join(sorted(trigger)[:5]), state.self_streak,
                LOOP_BACKOFF_S)

    def _hold_back(self, state: _State) -> None:
        """After a run of a looping check: its held changes, if real, run it again later."""
        held, state.held = state.held, set()
        state.stale |= {f for f in held if _digest(self.root / f) != state.seen.get(f)}
        if state.stale and state.backoff is None:
            state.backoff = asyncio.get_running_loop().call_later(
                LOOP_BACKOFF_S, self._release, state)

    def _release(self, state: _State) -> None:
        state.backoff = None
        state.pending |= state.stale
        state.stale = set()
        self._arm(state, now=True)

    async def _run(self, state: _State) -> None:
        try:
            while True:
                async with self._sem:
                    taken = await self._take(state)
                    if taken is None:
                        break
                    files, whole = taken
                    if state.looping:
                        state.seen = {f: _digest(self.root / f) for f in state.looping}
                    state.current = CheckRun(state.check, self.root, files, whole=whole,
                                             environ=self.environ, ledger=self.ledger,
                                             adapter=state.adapter)
                    if self.on_state is not None:
                        self.on_state()
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
                if state.held:
                    self._hold_back(state)
                self.on_result(run, findings)
                if not (state.pending or state.whole):
                    break
                if state.timer is not None:  # the queued run waits as _settle says instead
                    state.timer.cancel()
                    state.timer = None
                if self._settle(state):
                    break  # changes are still coming: the timer starts the queued run
        finally:
            state.task = None
            if self.on_state is not None:  # also when it ended without a run (deletions)
                self.on_state()
