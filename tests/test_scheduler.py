"""The scheduler in-process, on real child processes: debounce, loops, reconfiguration."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from devloop import scheduler as scheduler_mod
from devloop import tools
from devloop.config import Check, Config
from devloop.ignore import IgnoreRules
from devloop.scheduler import Scheduler
from devloop.store import Run
from devloop.watcher import Watcher


def check(name: str, script: str, **kw: object) -> Check:
    return Check(name=name, command=(sys.executable, "-c", script, "{files}"),
                 patterns=("*.txt",), **kw)  # type: ignore[arg-type]


async def settle(s: Scheduler) -> None:
    await asyncio.sleep(0.05)
    await s.wait_idle()


def test_a_fast_save_during_runs_is_never_left_unchecked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Someone saving while a slow check runs looks like a self-trigger loop; the last save
    must still be checked (held back LOOP_BACKOFF_S, here shortened)."""
    monkeypatch.setattr(scheduler_mod, "LOOP_RUNS", 3)
    monkeypatch.setattr(scheduler_mod, "LOOP_BACKOFF_S", 0.5)
    seen = tmp_path / "seen"
    target = tmp_path / "a.txt"
    script = (f"import sys, time; open({str(seen)!r}, 'a').write(open(sys.argv[1]).read()"
              " + '\\n'); time.sleep(0.3)")
    results: list[Run] = []

    async def main() -> None:
        s = Scheduler(tmp_path, Config(checks=(check("slow", script, debounce_ms=0),)),
                      lambda run, f: results.append(run), lambda: [])
        for i in range(12):
            target.write_text(f"v{i}")
            s.changed(["a.txt"])
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the held-back change runs after the backoff
        await settle(s)
        await s.stop()

    asyncio.run(main())
    assert "keeps changing the files it checks" in caplog.text  # taken for a loop...
    assert seen.read_text().splitlines()[-1] == "v11"  # ...and still the last save is checked


def test_a_real_loop_that_rewrites_the_same_bytes_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_mod, "LOOP_RUNS", 3)
    monkeypatch.setattr(scheduler_mod, "LOOP_BACKOFF_S", 0.2)
    target = tmp_path / "gen.txt"
    target.write_text("generated\n")
    results: list[Run] = []
    script = "import sys; open(sys.argv[1], 'w').write('generated\\n')"

    async def main() -> None:
        s = Scheduler(tmp_path, Config(checks=(check("gen", script, debounce_ms=0),)),
                      lambda run, f: results.append(run), lambda: [])

        async def watch() -> None:  # a small stand-in for the inotify watcher
            stamp = target.stat().st_mtime_ns
            while True:
                await asyncio.sleep(0.005)
                if target.stat().st_mtime_ns != stamp:
                    stamp = target.stat().st_mtime_ns
                    s.changed(["gen.txt"])

        watcher = asyncio.create_task(watch())
        s.changed(["gen.txt"])
        await asyncio.sleep(2.0)
        watcher.cancel()
        await s.stop()

    asyncio.run(main())
    assert 3 <= len(results) <= 5  # LOOP_RUNS, one more, then the same bytes: stop


def test_a_save_just_after_a_looping_checks_run_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real edit in the RUN_TAIL_S after the last run of a check caught in a loop is held
    back like the check's own writes; it must still get its run (after the backoff)."""
    monkeypatch.setattr(scheduler_mod, "LOOP_RUNS", 3)
    monkeypatch.setattr(scheduler_mod, "LOOP_BACKOFF_S", 0.3)
    root = tmp_path / "proj"
    root.mkdir()
    target = root / "gen.txt"
    target.write_text("generated\n")
    seen = tmp_path / "seen"
    # a formatter with nothing to change: it rewrites the same bytes, so it triggers itself
    script = (f"import sys; t = open(sys.argv[1]).read(); open({str(seen)!r}, 'a').write(t);"
              " open(sys.argv[1], 'w').write(t)")
    results: list[Run] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watcher = Watcher(root, IgnoreRules(root))
        for _ in watcher.walk_all(set(), None):
            pass

        def edit() -> None:  # as soon as the loop's last run is over, within its tail
            if s.busy:
                loop.call_later(0.005, edit)
            else:
                target.write_text("user edit\n")

        def on_result(run: Run, findings: object) -> None:
            results.append(run)
            if len(results) == scheduler_mod.LOOP_RUNS + 1:  # the last: its write is held
                loop.call_soon(edit)

        s = Scheduler(root, Config(checks=(check("fmt", script, debounce_ms=0),)),
                      on_result, lambda: [])
        loop.add_reader(watcher.fileno(), lambda: s.changed(watcher.read_events()[0]))
        s.changed(["gen.txt"])
        for _ in range(1000):  # the timeout only keeps a broken scheduler from hanging
            if seen.exists() and seen.read_text().endswith("user edit\n"):
                break
            await asyncio.sleep(0.02)
        loop.remove_reader(watcher.fileno())
        watcher.close()
        await s.stop()

    asyncio.run(main())
    assert seen.read_text().splitlines()[-1] == "user edit"  # the last save was checked


def test_debounce_window_restarts_after_a_queued_run(tmp_path: Path) -> None:
    starts: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Scheduler(tmp_path, Config(checks=(check("d", "import time; time.sleep(0.3)",
                                                     debounce_ms=400),)),
                      lambda run, f: starts.append(loop.time() - run.duration), lambda: [])
        (tmp_path / "a.txt").write_text("x")
        s.changed(["a.txt"])
        await settle(s)
        await asyncio.sleep(6)  # longer than MAX_WAIT_S after the first change
        t = loop.time()
        s.changed(["a.txt"])
        await settle(s)
        assert starts[-1] - t >= 0.35  # debounced, not started at once
        await s.stop()

    asyncio.run(main())


def test_reconfigure_keeps_the_semaphore_and_reports_new_checks(tmp_path: Path) -> None:
    async def main() -> None:
        a = check("a", "pass")
        s = Scheduler(tmp_path, Config(checks=(a,), max_parallel=1), lambda r, f: None,
                      lambda: [])
        sem = s._sem
        assert s.configure(Config(checks=(a, check("b", "pass")), max_parallel=1)) == ["b"]
        assert s._sem is sem
        s.configure(Config(checks=(a,), max_parallel=3))
        assert s._sem is not sem
        await s.stop()

    asyncio.run(main())


def test_a_change_with_no_debounce_starts_its_run_in_the_next_turn(tmp_path: Path) -> None:
    """debounce_ms = 0: no timer between a change and its run. A timer costs a turn of the
    loop, and whatever else the change queued (the daemon publishes its state to the
    database) would go before the run."""
    seen: list[str] = []

    async def main() -> None:
        (tmp_path / "a.txt").write_text("x")
        s = Scheduler(tmp_path, Config(checks=(check("now", "pass", debounce_ms=0),)),
                      lambda r, f: None, lambda: [])
        s.changed(["a.txt"])
        await asyncio.sleep(0)  # one turn: the run's task took it and started the process
        seen.append(s.states()["now"][0])
        await settle(s)
        await s.stop()

    asyncio.run(main())
    assert seen == ["running"]


def test_adapters_are_found_with_the_config_not_between_a_change_and_its_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding an adapter imports the adapters' modules: 13 ms measured, on the first save's
    way to its run. The scheduler finds them when it takes a config."""
    results: list[Run] = []
    found: list[str] = []

    async def main() -> None:
        (tmp_path / "a.txt").write_text("x")
        s = Scheduler(tmp_path, Config(checks=(check("a", "pass", debounce_ms=0),)),
                      lambda run, f: results.append(run), lambda: [])
        real = tools.adapter_for

        def counted(chk: Check) -> tools.Adapter:
            found.append(chk.name)
            return real(chk)

        monkeypatch.setattr(tools, "adapter_for", counted)
        s.changed(["a.txt"])
        await settle(s)
        found.append("(ran)")
        s.configure(Config(checks=(check("a", "pass", debounce_ms=0, tool="pysyntax"),)))
        await s.stop()

    asyncio.run(main())
    assert [r.outcome for r in results] == ["pass"]
    assert found == ["(ran)", "a"]  # none for the run; a changed check: its adapter anew


def test_selecting_the_one_file_of_a_run_never_yields(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice used up (here: at once) on the way to a run of one file must not hand the
    loop to whatever else waits (the daemon's database writes) before the run starts."""
    monkeypatch.setattr(scheduler_mod, "SLICE_S", -1.0)
    steps = scheduler_mod._select(["a.txt"], lambda _: True)
    with pytest.raises(StopIteration) as done:
        steps.send(None)  # the first step already returns: no await in between
    assert done.value.value == ["a.txt"]
