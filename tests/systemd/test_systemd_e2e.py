"""End-to-end: the real daemon under a real systemd, through the project's own units.

Every instance is the unmodified template /etc/systemd/system/devloop@.service plus the
per-instance drop-in docs/systemd.md describes (User=alice, DEVLOOP_PROJECT_DIR,
ReadWritePaths=). Drop-ins named ``test.conf`` shorten timings where a test needs it
and say so. Timeouts are generous and only there to avoid hanging.
"""

from __future__ import annotations

import json
import re
import signal
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from systemd_harness import FIGURES, USER, DevloopSystem, wait_for

pytestmark = pytest.mark.systemd

TOML = textwrap.dedent("""\
    heartbeat_interval = 1

    [checks.echo]
    command = ["sh", "-c", "echo checked"]
    patterns = ["*.txt"]
    debounce_ms = 0
    run_on_start = false

    [checks.fails]
    command = ["sh", "-c", "echo broken >&2; exit 3"]
    patterns = ["*.bad"]
    debounce_ms = 0
    run_on_start = false
    """)


def records(sys_: DevloopSystem, *matches: str) -> list[dict[str, Any]]:
    return sys_.sd.journal_json(*matches)


def check_records(sys_: DevloopSystem, name: str, check: str) -> list[dict[str, Any]]:
    return [r for r in records(sys_, "-u", sys_.unit(name))
            if r.get("DEVLOOP_CHECK") == check and r.get("DEVLOOP_OUTCOME")]


def kill(sys_: DevloopSystem, pid: str, sig: signal.Signals) -> None:
    sys_.sd.run(["kill", f"-{sig.name.removeprefix('SIG')}", pid])


@pytest.fixture(scope="module")
def proj(devloop_system: DevloopSystem) -> Iterator[DevloopSystem]:
    """devloop@proj for /home/alice/dev/proj, started once; the start is timed."""
    sys_ = devloop_system
    sys_.make_project("proj", TOML, files={"src/deep/er/keep.py": "x = 1\n"})
    t = time.monotonic()
    sys_.sd.systemctl("start", sys_.unit("proj"))
    elapsed = time.monotonic() - t
    # no polling: the state right after `systemctl start` returned
    sys_.after_start = sys_.state("proj")  # type: ignore[attr-defined]
    sys_.after_start_heartbeat = sys_.heartbeat("proj")  # type: ignore[attr-defined]
    FIGURES["systemctl start devloop@proj (small project)"] = f"{elapsed:.2f}s"
    yield sys_
    sys_.remove_project("proj")


def test_start_returns_only_after_ready(proj: DevloopSystem) -> None:
    st: dict[str, str] = proj.after_start  # type: ignore[attr-defined]
    assert st["ActiveState"] == "active" and st["SubState"] == "running", st
    assert st["StatusText"].startswith("watching "), st
    # the walk is done when start returns: a file in a directory that existed before the
    # start is seen right away (its watch was in place)
    proj.sd.write_file(f"{proj.project_dir('proj')}/src/deep/er/first.txt", "1\n", owner=USER)
    wait_for(lambda: check_records(proj, "proj", "echo"), timeout=30, what="echo check run")


def test_systemctl_status_shows_our_status(proj: DevloopSystem) -> None:
    out = proj.sd.systemctl("status", proj.unit("proj")).stdout
    m = re.search(r'Status: "(watching \d+ dirs[^"]*)"', out)
    assert m, out
    assert "Active: active (running)" in out


def test_edit_runs_check_and_journal_has_fields(proj: DevloopSystem) -> None:
    d = proj.project_dir("proj")
    before = len(check_records(proj, "proj", "echo"))
    proj.sd.write_file(f"{d}/notes.txt", "hello\n", owner=USER)
    recs = wait_for(lambda: (lambda r: r if len(r) > before else None)(
        check_records(proj, "proj", "echo")), timeout=30, what="echo check record")
    rec = recs[-1]
    assert rec["DEVLOOP_OUTCOME"] == "pass", rec
    assert rec["PRIORITY"] == "6", rec                      # INFO
    assert rec["DEVLOOP_PROJECT"] == d, rec
    assert rec["SYSLOG_IDENTIFIER"] == "devloop", rec
    assert rec["_SYSTEMD_UNIT"] == proj.unit("proj"), rec
    assert re.match(r"check echo pass in \d+(\.\d+)?s", rec["MESSAGE"]), rec

    proj.sd.write_file(f"{d}/x.bad", "!\n", owner=USER)
    fails = wait_for(lambda: check_records(proj, "proj", "fails"), timeout=30,
                     what="failing check record")
    assert fails[-1]["DEVLOOP_OUTCOME"] == "fail", fails[-1]
    assert fails[-1]["PRIORITY"] == "4", fails[-1]            # WARNING
    # `-o verbose` shows the same fields
    verbose = proj.sd.journal("-u", proj.unit("proj"), "-o", "verbose", "DEVLOOP_CHECK=fails")
    assert "DEVLOOP_OUTCOME=fail" in verbose and f"DEVLOOP_PROJECT={d}" in verbose


def test_status_wait_under_the_unit(proj: DevloopSystem) -> None:
    """`status --wait` (as alice) asks the hardened daemon through its FIFO in .devloop/
    and returns with the result of a save made just before."""
    d = proj.project_dir("proj")
    proj.sd.write_file(f"{d}/wait.bad", "!\n", owner=USER)
    r = proj.devloop("status", d, "fails", "--wait", "--timeout", "120")
    assert r.returncode == 1, r
    assert "fails: fail" in r.stdout and "| broken" in r.stdout, r
    assert "no daemon" not in r.stdout, r
    r = proj.devloop("status", d, "--json")
    assert all(e["state"] == "idle" and e["stale"] is False
               for e in json.loads(r.stdout)), r


def test_journalctl_match_on_devloop_check(proj: DevloopSystem) -> None:
    wait_for(lambda: check_records(proj, "proj", "echo"), timeout=30, what="an echo run")
    recs = records(proj, "DEVLOOP_CHECK=echo")
    assert recs and all(r["DEVLOOP_CHECK"] == "echo" for r in recs)
    assert all(r["_SYSTEMD_UNIT"] == proj.unit("proj") for r in recs)


def test_daemon_status_healthy_while_running(proj: DevloopSystem) -> None:
    r = proj.devloop("daemon-status", proj.project_dir("proj"))
    assert r.returncode == 0, r
    assert "HEALTHY" in r.stdout and "UNHEALTHY" not in r.stdout, r


def test_reload_keeps_running(proj: DevloopSystem) -> None:
    pid = proj.state("proj")["MainPID"]
    proj.sd.systemctl("reload", proj.unit("proj"))
    st = wait_for(lambda: (lambda s: s if s["StatusText"].startswith("watching") else None)(
        proj.state("proj")), timeout=30, what="watching after reload")
    assert st["MainPID"] == pid and st["ActiveState"] == "active", st


def test_daemon_status_unhealthy_after_crash(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "crash"
    sys_.make_project(name, TOML, dropins={"test.conf": "[Service]\nRestart=no\n"})
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        wait_for(lambda: sys_.heartbeat(name), timeout=30, what="heartbeat")
        ok = sys_.devloop("daemon-status", sys_.project_dir(name))
        assert ok.returncode == 0, ok
        kill(sys_, sys_.state(name)["MainPID"], signal.SIGKILL)
        wait_for(lambda: sys_.state(name)["ActiveState"] in ("failed", "inactive"), timeout=30)
        bad = sys_.devloop("daemon-status", sys_.project_dir(name))
        assert bad.returncode == 1, bad
        assert "UNHEALTHY" in bad.stdout, bad
        # the reason is given: more than the bare word
        line = next(x for x in bad.stdout.splitlines() if "UNHEALTHY" in x)
        assert len(line.split("UNHEALTHY", 1)[1].strip(" :-")) > 0 or len(
            bad.stdout.splitlines()) > 1, bad
    finally:
        sys_.remove_project(name)


def test_sigkill_is_restarted(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "killed"
    sys_.make_project(name, TOML)
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        st = sys_.state(name)
        t = time.monotonic()
        kill(sys_, st["MainPID"], signal.SIGKILL)
        new = sys_.wait_active(name, not_pid=st["MainPID"], timeout=60)
        elapsed = time.monotonic() - t
        FIGURES["SIGKILL -> active again (RestartSec=5s)"] = f"{elapsed:.2f}s"
        assert int(new["NRestarts"]) == int(st["NRestarts"]) + 1, new
        assert new["StatusText"].startswith("watching"), new
        assert elapsed >= 5.0  # RestartSec=5s is honoured
    finally:
        sys_.remove_project(name)


def test_sigstop_is_killed_by_watchdog(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "stopped"
    # test.conf: a short watchdog and restart delay so the test is quick
    sys_.make_project(name, TOML, dropins={
        "test.conf": "[Service]\nWatchdogSec=3s\nRestartSec=1s\n"})
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        pid = sys_.state(name)["MainPID"]
        time.sleep(4)  # a healthy daemon pets the watchdog: still the same process
        assert sys_.state(name)["MainPID"] == pid
        t = time.monotonic()
        kill(sys_, pid, signal.SIGSTOP)
        sys_.wait_active(name, not_pid=pid, timeout=60)
        FIGURES["SIGSTOP -> watchdog kill -> active again (WatchdogSec=3s)"] = \
            f"{time.monotonic() - t:.2f}s"
        j = sys_.sd.journal("-u", sys_.unit(name))
        assert "Watchdog timeout" in j, j
    finally:
        sys_.remove_project(name)


def test_repeated_crashes_hit_start_limit(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "crashy"
    # test.conf: restart fast; StartLimitBurst=5 / StartLimitIntervalSec=600 are the template's
    sys_.make_project(name, TOML, dropins={"test.conf": "[Service]\nRestartSec=100ms\n"})
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        kills = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s = sys_.state(name)
            if s["ActiveState"] == "failed":
                break
            if s["ActiveState"] == "active" and s["MainPID"] != "0":
                sys_.sd.run(["kill", "-KILL", s["MainPID"]], check=False)
                kills += 1
                wait_for(lambda s=s: sys_.state(name)["MainPID"] != s["MainPID"], timeout=30)
            time.sleep(0.05)
        assert sys_.state(name)["ActiveState"] == "failed"
        assert kills == 5, kills  # 1 start + 4 restarts allowed, the 5th restart refused
        j = sys_.sd.journal("-u", sys_.unit(name))
        assert "Start request repeated too quickly" in j, j
    finally:
        sys_.remove_project(name)


def test_fatal_exit_codes_do_not_restart(devloop_system: DevloopSystem) -> None:
    """Bad config (78), missing project dir (66), project already watched (75): the unit
    fails once with the daemon's exit status and its one-line reason; no restart loop."""
    sys_ = devloop_system
    sys_.make_project("badcfg", 'max_parallel = "two"\n' + TOML)
    sys_.make_project("gone", None)
    sys_.sd.run(["rm", "-rf", sys_.project_dir("gone")])
    sys_.make_project("holder", TOML)
    sys_.make_project("dup", None)
    # "dup" watches the same directory as "holder"
    sys_.sd.write_file(f"/etc/systemd/system/{sys_.unit('dup')}.d/instance.conf",
                       "[Service]\nUser=alice\n"
                       f"Environment=DEVLOOP_PROJECT_DIR={sys_.project_dir('holder')}\n"
                       f"ReadWritePaths=-{sys_.project_dir('holder')}/.devloop\n")
    sys_.sd.systemctl("daemon-reload")
    expected = {"badcfg": 78, "gone": 66, "dup": 75}
    try:
        sys_.sd.systemctl("start", sys_.unit("holder"))
        for name in expected:
            r = sys_.sd.systemctl("start", sys_.unit(name), check=False)
            assert r.returncode != 0, (name, r)
        time.sleep(7)  # longer than RestartSec=5s: a restart would have happened by now
        for name, code in expected.items():
            st = sys_.state(name)
            assert st["ActiveState"] == "failed", (name, st)
            assert st["ExecMainStatus"] == str(code), (name, st)
            assert st["NRestarts"] == "0", (name, st)
        bad = sys_.sd.journal("-u", sys_.unit("badcfg"))
        assert "devloop.toml" in bad and "max_parallel" in bad, bad
        holder_pid = sys_.state("holder")["MainPID"]
        assert holder_pid in sys_.sd.journal("-u", sys_.unit("dup")), "75 names the PID"
        assert sys_.state("holder")["ActiveState"] == "active"
    finally:
        for name in (*expected, "holder"):
            sys_.remove_project(name)


def test_stop_is_clean(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "stopme"
    toml = textwrap.dedent("""\
        [checks.sleeper]
        command = ["sh", "-c", "sleep 1000 & sleep 1001; wait"]
        patterns = ["*.txt"]
        run_on_start = true
        timeout_s = 3000
        """)
    sys_.make_project(name, toml)
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        wait_for(lambda: sys_.sd.run(["pgrep", "-f", "^sleep 100[01]$"],
                                     check=False).stdout.split(),
                 timeout=30, what="the check's sleeps")
        assert sys_.heartbeat(name) is not None
        pid = sys_.state(name)["MainPID"]
        sys_.sd.run(["systemd-analyze", "log-level", "debug"])
        try:
            t = time.monotonic()
            sys_.sd.systemctl("stop", sys_.unit(name))
            FIGURES["systemctl stop with a running check"] = f"{time.monotonic() - t:.2f}s"
        finally:
            sys_.sd.run(["systemd-analyze", "log-level", "info"])
        st = sys_.sd.show(sys_.unit(name), "ActiveState", "Result", "ExecMainStatus",
                          "ExecMainCode")
        assert st["ActiveState"] == "inactive" and st["Result"] == "success", st
        assert st["ExecMainStatus"] == "0", st
        assert sys_.heartbeat(name) is None
        assert sys_.sd.run(["test", "-e", f"{sys_.project_dir(name)}/.devloop/daemon.heartbeat"],
                           check=False).returncode == 1
        left = sys_.sd.run(["pgrep", "-f", "^sleep 100[01]$"], check=False).stdout.split()
        assert left == [], left
        j = sys_.sd.journal("-u", sys_.unit(name))
        assert f"Got notification message from PID {pid} (STOPPING=1" in j, j
        # NB: not asserted: "Killing process N (sleep) with signal SIGKILL" from systemd.
        # The daemon SIGTERMs/SIGKILLs the check's group, but the orphaned sleeps are
        # reaped by PID 1, and in ~1 of 5 runs systemd handles the main exit first and
        # "kills" them again (see the report on issue 3).
    finally:
        sys_.remove_project(name)


def test_memory_max_is_enforced_on_checks(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "mem"
    toml = textwrap.dedent("""\
        [checks.hog]
        command = ["python3", "-c", "b = b'x' * (400 << 20); print(len(b))"]
        patterns = ["*.hog"]
        debounce_ms = 0
        run_on_start = false

        [checks.small]
        command = ["python3", "-c", "b = b'x' * (10 << 20); print(len(b))"]
        patterns = ["*.small"]
        debounce_ms = 0
        run_on_start = false
        """)
    # test.conf: a small MemoryMax= so a 400 MiB check is over it
    sys_.make_project(name, toml, dropins={"test.conf": "[Service]\nMemoryMax=150M\n"})
    try:
        sys_.sd.systemctl("start", sys_.unit(name))
        cg = sys_.sd.show(sys_.unit(name), "ControlGroup")["ControlGroup"]
        limit = sys_.sd.run(["cat", f"/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes"])
        assert int(limit.stdout) == 150 << 20
        pid = sys_.state(name)["MainPID"]
        d = sys_.project_dir(name)
        sys_.sd.write_file(f"{d}/a.small", "1\n", owner=USER)
        small = wait_for(lambda: check_records(sys_, name, "small"), timeout=60)
        assert small[-1]["DEVLOOP_OUTCOME"] == "pass", small[-1]
        sys_.sd.write_file(f"{d}/a.hog", "1\n", owner=USER)
        hog = wait_for(lambda: check_records(sys_, name, "hog"), timeout=60)
        assert hog[-1]["DEVLOOP_OUTCOME"] in ("fail", "error"), hog[-1]
        failcnt = sys_.sd.run(["cat", f"/sys/fs/cgroup/memory{cg}/memory.failcnt"]).stdout
        assert int(failcnt) > 0
        st = sys_.state(name)
        assert st["ActiveState"] == "active" and st["MainPID"] == pid, st  # daemon survived
    finally:
        sys_.remove_project(name)


def test_start_time_on_10000_directories(devloop_system: DevloopSystem) -> None:
    sys_ = devloop_system
    name = "big"
    d = sys_.make_project(name, TOML)
    sys_.sd.as_user(USER, ["python3", "-c",
                           "import os, sys\n"
                           "for i in range(100):\n"
                           "    for j in range(99):\n"
                           "        os.makedirs(f'{sys.argv[1]}/d{i:02}/e{j:02}')\n", d])
    n = int(sys_.sd.run(["sh", "-c", f"find {d} -type d | wc -l"]).stdout)
    assert n >= 10000
    try:
        t = time.monotonic()
        sys_.sd.systemctl("start", sys_.unit(name), timeout=600)
        elapsed = time.monotonic() - t
        FIGURES[f"systemctl start devloop@big ({n} dirs)"] = f"{elapsed:.2f}s"
        st = sys_.state(name)
        assert st["ActiveState"] == "active", st
        m = re.match(r"watching ([\d,]+) dirs", st["StatusText"])
        assert m and int(m.group(1).replace(",", "")) >= 10000, st["StatusText"]
        # the last directory walked is already watched when start returns
        sys_.sd.write_file(f"{d}/d99/e98/late.txt", "1\n", owner=USER)
        wait_for(lambda: check_records(sys_, name, "echo"), timeout=30, what="echo run")
    finally:
        sys_.remove_project(name)
