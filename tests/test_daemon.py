"""The daemon end to end: a real `devloop watch` process, real inotify, real checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_proc import (
    DaemonProc,
    alive,
    devloop,
    inotify_watches,
    ran_files,
    read_runs,
    record_check,
    status_json,
    wait_for,
)

Start = Callable[..., DaemonProc]


def write_config(root: Path, body: str, **globals_: object) -> None:
    head = "".join(f"{k} = {json.dumps(v)}\n" for k, v in globals_.items())
    (root / "devloop.toml").write_text(head + body)


def test_edit_runs_the_matching_check_with_the_file(project: Path, tmp_path: Path,
                                                     start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    other = tmp_path / "other.jsonl"
    write_config(project, "[checks.py]\n" + record_check(log, ["*.py"])
                 + "[checks.md]\n" + record_check(other, ["*.md"]))
    d = start_daemon(project)
    (project / "a.py").write_text("x = 1\n")
    runs = wait_for(lambda: read_runs(log), what="a run")
    assert runs[0]["files"] == ["a.py"]
    assert runs[0]["cwd"] == str(project)
    # own session and process group, scrubbed environment
    assert runs[0]["sid"] == runs[0]["pid"] == runs[0]["pgid"]
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        assert key not in runs[0]["env"]
    assert read_runs(other) == []
    assert d.proc.poll() is None


def test_status_and_findings_replaced_per_file(project: Path, start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(
        "[checks.syntax]\n"
        f'command = ["{sys.executable}", "-m", "devloop.tools.pysyntax", "{{files}}"]\n'
        'patterns = ["*.py"]\ndebounce_ms = 0\n'
    )
    (project / "good.py").write_text("x = 1\n")
    start_daemon(project)


    wait_for(lambda: [s for s in status_json(project) if s["outcome"] == "pass"],
             what="start-up run")
    (project / "bad.py").write_text("def f(:\n    pass\n")
    failing = wait_for(lambda: [s for s in status_json(project) if s["outcome"] == "fail"],
                       what="a fail")
    findings = failing[0]["findings"]
    assert [(f["file"], f["line"]) for f in findings] == [("bad.py", 1)]  # type: ignore[index]
    text = devloop("status", str(project))
    assert text.returncode == 1
    assert "bad.py:1:" in text.stdout
    (project / "bad.py").write_text("def f():\n    pass\n")
    fixed = wait_for(lambda: [s for s in status_json(project) if s["outcome"] == "pass"
                              and s["files"] == ["bad.py"]], what="the fix")
    assert fixed[0]["findings"] == []
    assert devloop("status", str(project)).returncode == 0


def test_new_directory_written_at_once_and_deep(project: Path, tmp_path: Path,
                                                start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"], debounce_ms=200))
    d = start_daemon(project)
    # mkdir -p and write in the same instant: the watch is added, then the dir is scanned
    deep = project / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("hi")
    (project / "a" / "g.txt").write_text("hi")
    wait_for(lambda: ran_files(log) >= {"a/b/c/f.txt", "a/g.txt"}, what="files in new dirs")
    wait_for(lambda: inotify_watches(d.pid) == 4, what="4 watches")
    # and later edits inside the new directory are seen through its own watch
    (deep / "h.txt").write_text("later")
    wait_for(lambda: "a/b/c/h.txt" in ran_files(log), what="edit in new dir")


def test_moves_in_out_and_within(project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "x.txt").write_text("x")
    (project / "stay").mkdir()
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    d = start_daemon(project)
    assert inotify_watches(d.pid) == 2
    os.rename(outside, project / "moved_in")  # a tree moved in is walked
    wait_for(lambda: "moved_in/sub/x.txt" in ran_files(log), what="moved-in file")
    assert inotify_watches(d.pid) == 4
    os.rename(project / "moved_in", project / "stay" / "renamed")  # moved within
    wait_for(lambda: "stay/renamed/sub/x.txt" in ran_files(log), what="renamed dir")
    (project / "stay" / "renamed" / "sub" / "y.txt").write_text("y")
    wait_for(lambda: "stay/renamed/sub/y.txt" in ran_files(log), what="edit after rename")
    os.rename(project / "stay" / "renamed", tmp_path / "gone")  # moved out: watches dropped
    wait_for(lambda: inotify_watches(d.pid) == 2, what="watches dropped")
    n = len(read_runs(log))
    (tmp_path / "gone" / "sub" / "z.txt").write_text("z")
    (project / "stay" / "w.txt").write_text("w")
    wait_for(lambda: "stay/w.txt" in ran_files(log), what="edit after move out")
    assert "gone/sub/z.txt" not in ran_files(log) and len(read_runs(log)) == n + 1


def test_atomic_saves_are_one_change_of_the_real_file(project: Path, tmp_path: Path,
                                                      start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.py"], debounce_ms=300))
    target = project / "m.py"
    target.write_text("v1\n")
    start_daemon(project)
    # vim (backupcopy=no): rename to backup, write new, delete backup; plus its 4913 probe
    (project / "4913").write_text("")
    os.unlink(project / "4913")
    os.rename(target, project / "m.py~")
    target.write_text("v2\n")
    os.unlink(project / "m.py~")
    wait_for(lambda: read_runs(log), what="vim save")
    time.sleep(0.6)
    runs = read_runs(log)
    assert [r["files"] for r in runs] == [["m.py"]]
    # JetBrains safe write: tmp file, old renamed away, tmp renamed in, old deleted
    tmp = project / "m.py___jb_tmp___"
    tmp.write_text("v3\n")
    os.rename(target, project / "m.py___jb_old___")
    os.rename(tmp, target)
    os.unlink(project / "m.py___jb_old___")
    wait_for(lambda: len(read_runs(log)) == 2, what="jetbrains save")
    time.sleep(0.6)
    assert [r["files"] for r in read_runs(log)] == [["m.py"], ["m.py"]]


def test_ignored_trees_get_no_watch(project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    for d in ("src/pkg", "node_modules/a/b", ".git/objects", "build/out", "docs/_site/x",
              ".venv/lib", "src/__pycache__", "local/secret"):
        (project / d).mkdir(parents=True)
    (project / ".gitignore").write_text("build/\n")
    (project / "docs" / ".gitignore").write_text("_site/\n")
    (project / ".git" / "info").mkdir()
    (project / ".git" / "info" / "exclude").write_text("local/\n")
    write_config(project, "[checks.all]\n" + record_check(log, ["*"]), ignore=["*.log"])
    d = start_daemon(project)
    # project, src, src/pkg, docs, and .git/info for its exclude file: nothing else
    assert inotify_watches(d.pid) == 5
    (project / "node_modules" / "a" / "b" / "x.txt").write_text("x")
    (project / "build" / "out" / "x.txt").write_text("x")
    (project / "src" / "debug.log").write_text("x")
    (project / "src" / "pkg" / "m.swp").write_text("x")
    (project / "src" / "pkg" / "ok.txt").write_text("x")
    wait_for(lambda: read_runs(log), what="a run")
    time.sleep(0.3)
    assert ran_files(log) == {"src/pkg/ok.txt"}
    # a new ignored directory gets no watch either
    (project / "src" / "pkg" / "node_modules" / "deep").mkdir(parents=True)
    (project / "src" / "pkg" / "new").mkdir()
    wait_for(lambda: inotify_watches(d.pid) == 6, what="watch for the new dir")
    time.sleep(0.3)
    assert inotify_watches(d.pid) == 6


def test_overflow_rescans_and_loses_nothing(project: Path, tmp_path: Path,
                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]), heartbeat_interval=1)
    (project / "d").mkdir()
    (project / "d" / "old.txt").write_text("old")
    (project / "d" / "doomed.txt").write_text("doomed")
    d = start_daemon(project)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    n = limit + 2000
    os.kill(d.pid, signal.SIGSTOP)  # the daemon cannot read: the kernel queue overflows
    try:
        for i in range(n):
            (project / "d" / f"f{i}.txt").write_text("x")
        (project / "d" / "old.txt").write_text("changed, longer")
        os.unlink(project / "d" / "doomed.txt")
    finally:
        os.kill(d.pid, signal.SIGCONT)
    expected = {f"d/f{i}.txt" for i in range(n)} | {"d/old.txt"}
    wait_for(lambda: ran_files(log) >= expected, timeout=120, what="every file after overflow")
    assert "inotify queue overflowed" in d.log
    hb = project / ".devloop" / "daemon.heartbeat"
    wait_for(lambda: json.loads(hb.read_text()).get("rescans", 0) >= 1, what="rescans count")
    assert json.loads(hb.read_text())["overflows"] >= 1


def test_check_that_hangs_is_killed_with_its_grandchildren(project: Path, tmp_path: Path,
                                                           start_daemon: Start) -> None:
    pids = tmp_path / "pids"
    script = (
        f"sleep 1000 & echo $! >> {pids}; "
        f"(trap '' TERM; sleep 1000) & echo $! >> {pids}; "
        "trap '' TERM; sleep 1000"
    )
    write_config(project, "[checks.hang]\n"
                 f"command = [{json.dumps(script)}]\nshell = true\n"
                 'patterns = ["*.txt"]\ndebounce_ms = 0\ntimeout_s = 0.5\nrun_on_start = false\n')
    start_daemon(project)
    (project / "a.txt").write_text("x")


    st = wait_for(lambda: status_json(project), timeout=60, what="a finished run")
    assert st[0]["outcome"] == "timeout"
    for pid in pids.read_text().split():
        wait_for(lambda pid=pid: not alive(pid), timeout=10, what=f"{pid} gone")


def test_stop_leaves_no_check_process(project: Path, tmp_path: Path,
                                      start_daemon: Start) -> None:
    pids = tmp_path / "pids"
    write_config(project, "[checks.long]\n"
                 f'command = ["sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait"]\n'
                 'shell = true\npatterns = ["*.txt"]\ndebounce_ms = 0\n')
    d = start_daemon(project)
    (project / "a.txt").write_text("x")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="check started")
    assert (project / ".devloop" / "daemon.heartbeat").exists()
    assert d.stop() == 0
    assert d.sent("STOPPING=1")
    for pid in pids.read_text().split():
        assert not alive(pid)
    assert not (project / ".devloop" / "daemon.heartbeat").exists()


def test_debounce_burst_is_one_run_and_queue_coalesces(project: Path, tmp_path: Path,
                                                       start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"], debounce_ms=400))
    start_daemon(project)
    for i in range(20):
        (project / f"f{i}.txt").write_text("x")
    wait_for(lambda: read_runs(log), what="a run")
    time.sleep(1.0)
    runs = read_runs(log)
    assert len(runs) == 1
    assert set(runs[0]["files"]) == {f"f{i}.txt" for i in range(20)}


def test_on_busy_queue_and_restart(project: Path, tmp_path: Path, start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    slow = f"import sys,time; open({str(log)!r},'a').write(' '.join(sys.argv[1:])+'\\n'); " \
           "time.sleep(1.5)"
    write_config(project,
                 "[checks.q]\n"
                 f"command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(slow)}, "
                 '"{files}"]\npatterns = ["q*.txt"]\ndebounce_ms = 0\nrun_on_start = false\n'
                 "[checks.r]\n"
                 f"command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(slow)}, "
                 '"{files}"]\npatterns = ["r*.txt"]\ndebounce_ms = 0\nrun_on_start = false\n'
                 'on_busy = "restart"\n', max_parallel=2)
    start_daemon(project)
    (project / "q1.txt").write_text("x")
    wait_for(lambda: log.exists() and "q1.txt" in log.read_text(), what="q1 started")
    for i in range(2, 6):
        (project / f"q{i}.txt").write_text("x")
        time.sleep(0.05)
    # queue: the running one finishes, then exactly one run with everything that came since
    wait_for(lambda: len(log.read_text().splitlines()) >= 2, timeout=30, what="queued run")
    time.sleep(2.0)
    lines = log.read_text().splitlines()
    assert lines == ["q1.txt", "q2.txt q3.txt q4.txt q5.txt"]
    # restart: the running one is cancelled
    (project / "r1.txt").write_text("x")
    wait_for(lambda: "r1.txt" in log.read_text(), what="r1 started")
    (project / "r2.txt").write_text("x")
    wait_for(lambda: "r1.txt r2.txt" in log.read_text(), what="restarted run")
    r = devloop("status", str(project), "--json")
    wait_for(lambda: any(
        s["check"] == "r" and s["outcome"] == "pass"
        for s in json.loads(devloop("status", str(project), "--json").stdout)),
        what="r passes")
    assert r.returncode in (0, 1)


def test_second_daemon_is_refused_with_the_pid(project: Path, tmp_path: Path,
                                               start_daemon: Start) -> None:
    write_config(project, "[checks.all]\n" + record_check(tmp_path / "l", ["*.txt"]))
    d = start_daemon(project)
    r = subprocess.run([sys.executable, "-m", "devloop", "watch", "--foreground", str(project)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 75
    assert f"PID {d.pid}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert d.proc.poll() is None


def test_kill9_leaves_no_stale_lock(project: Path, tmp_path: Path, start_daemon: Start) -> None:
    write_config(project, "[checks.all]\n" + record_check(tmp_path / "l", ["*.txt"]))
    d = start_daemon(project)
    d.stop(signal.SIGKILL)
    d2 = start_daemon(project)
    assert d2.proc.poll() is None


def test_watch_limit_at_start_up_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    for i in range(30):
        (project / f"d{i}" / "sub").mkdir(parents=True)
    write_config(project, "[checks.all]\n" + record_check(tmp_path / "l", ["*.txt"]))
    # a user namespace with its own, lower limit: the host's limit is left alone
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         'echo 20 > /proc/sys/user/max_inotify_watches && exec "$@"', "sh",
         sys.executable, "-m", "devloop", "watch", "--foreground", str(project)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 71, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "fs.inotify.max_user_watches is 20" in line
    assert "needs 61 watches" in line
    assert "sysctl fs.inotify.max_user_watches=" in line


def test_project_deleted_while_watched_exits_66(tmp_path: Path, start_daemon: Start) -> None:
    root = tmp_path / "p"
    root.mkdir()
    write_config(root, "[checks.all]\n" + record_check(tmp_path / "l", ["*.txt"]))
    d = start_daemon(root)
    os.rename(root, tmp_path / "elsewhere")
    assert d.proc.wait(30) == 66
    assert "deleted or moved away" in d.log


def test_reload_on_sighup_keeps_old_config_when_broken(project: Path, tmp_path: Path,
                                                       start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    d = start_daemon(project)
    (project / "devloop.toml").write_text("[checks.all]\nbogus = 1\n")
    wait_for(lambda: "config reload failed" in d.log, what="reload failure logged")
    assert d.sent("RELOADING=1")
    (project / "a.txt").write_text("x")
    wait_for(lambda: read_runs(log), what="old config still runs")
    write_config(project, "[checks.all]\n" + record_check(log, ["*.md"]))
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log, what="reload")
    (project / "b.md").write_text("x")
    wait_for(lambda: "b.md" in ran_files(log), what="new config runs")


def test_file_names_reach_checks_intact(project: Path, tmp_path: Path,
                                        start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*"], debounce_ms=300))
    start_daemon(project)
    names = ["with space.txt", "new\nline.txt", "quote'\"s.txt", "$(touch pwned).txt",
             "-leading.txt"]
    for n in names:
        (project / n).write_text("x")
    raw = os.fsencode(project) + b"/bytes-\xff\xfe.txt"
    with open(raw, "wb") as f:
        f.write(b"x")
    wait_for(lambda: len(ran_files(log)) >= len(names) + 1, what="all names")
    files = ran_files(log)
    assert {"with space.txt", "new\nline.txt", "quote'\"s.txt", "$(touch pwned).txt",
            "./-leading.txt", os.fsdecode(b"bytes-\xff\xfe.txt")} <= files
    assert not (project / "pwned").exists()


@pytest.mark.parametrize("args", [["watch", "--foreground", "/nonexistent/dir"],
                                  ["status", "/nonexistent/dir"]])
def test_missing_project_is_66(args: list[str]) -> None:
    r = devloop(*args)
    assert r.returncode == 66
    assert r.stderr.strip() == "devloop: error: no such directory: /nonexistent/dir"


def test_usage_errors_are_64() -> None:
    assert devloop("watch", "--bogus").returncode == 64
    assert devloop("frobnicate").returncode == 64


def test_threads_one_and_idle_no_wakeups(project: Path, tmp_path: Path,
                                         start_daemon: Start) -> None:
    write_config(project, "[checks.all]\n" + record_check(tmp_path / "l", ["*.txt"]),
                 heartbeat_interval=30)
    d = start_daemon(project)
    (project / "a.txt").write_text("x")
    wait_for(lambda: read_runs(tmp_path / "l"), what="a run")
    assert len(os.listdir(f"/proc/{d.pid}/task")) == 1

    def switches() -> int:  # wake-ups: a preemption (nonvoluntary) says only the machine is busy
        text = Path(f"/proc/{d.pid}/status").read_text()
        return sum(int(line.split()[1]) for line in text.splitlines()
                   if line.startswith("voluntary_ctxt_switches:"))

    time.sleep(0.5)
    before = switches()
    time.sleep(3)
    # no polling: with nothing changing and no timer due, the process sleeps
    assert switches() - before <= 2


def test_new_file_is_one_change_and_links_count(project: Path, tmp_path: Path,
                                                start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))  # debounce 0
    (project / "src.txt").write_text("x")
    start_daemon(project)
    with open(project / "new.txt", "w") as f:  # created, then written a while later
        f.flush()
        time.sleep(0.3)
        f.write("content")
    wait_for(lambda: read_runs(log), what="a run")
    time.sleep(0.5)
    assert [r["files"] for r in read_runs(log)] == [["new.txt"]]
    os.link(project / "src.txt", project / "hard.txt")  # IN_CREATE only, no close
    os.symlink("src.txt", project / "soft.txt")
    wait_for(lambda: {"hard.txt", "soft.txt"} <= ran_files(log), what="links")


def test_a_notify_socket_nobody_reads_never_blocks_the_loop(project: Path, tmp_path: Path,
                                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    sock = tmp_path / "deaf.sock"
    # a receiver that never reads, with a queue of 4 datagrams: in a network namespace of
    # its own, so the host's net.unix.max_dgram_qlen is left alone
    deaf = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-c",
         "import socket, sys, time\n"
         "open('/proc/sys/net/unix/max_dgram_qlen', 'w').write('4')\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])\n"
         "print('ok', flush=True); time.sleep(600)\n", str(sock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert deaf.stdout is not None and deaf.stdout.readline() == "ok\n"
        d = start_daemon(project, ready=False, env={"NOTIFY_SOCKET": str(sock)})
        wait_for(lambda: (project / ".devloop" / "daemon.heartbeat").exists(), what="start")
        for i in range(20):
            (project / f"f{i}.txt").write_text("x")
            time.sleep(0.3)  # a STATUS= for each run: the receiver's queue is full at once
        wait_for(lambda: ran_files(log) >= {f"f{i}.txt" for i in range(20)}, what="every run")
        assert d.proc.poll() is None
        assert d.log.count("sd_notify to") == 1  # the failure is logged once
    finally:
        deaf.kill()
        deaf.wait()


def test_gitignore_precedence_like_git(project: Path, tmp_path: Path) -> None:
    from devloop.ignore import IgnoreRules

    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / ".gitignore").write_text("*.py\n")
    (project / "sub").mkdir()
    (project / "sub" / ".gitignore").write_text("!keep.py\n")
    (project / ".git" / "info" / "exclude").write_text("generated.py\nlocal/\n")
    (project / "gen").mkdir()
    (project / "gen" / ".gitignore").write_text("!generated.py\n")
    for f in ("a.py", "sub/keep.py", "sub/other.py", "gen/generated.py", "gen/x.txt"):
        (project / f).write_text("x")
    rules = IgnoreRules(project, ("*.txt",))
    for d in ("", "sub", "gen"):
        rules.load_dir(d)
    git = subprocess.run(["git", "-C", str(project), "status", "--porcelain", "-uall"],
                         capture_output=True, text=True, check=True).stdout
    seen_by_git = {line[3:] for line in git.splitlines()} - {".gitignore", "sub/.gitignore",
                                                            "gen/.gitignore"}
    ours = {f for f in ("a.py", "sub/keep.py", "sub/other.py", "gen/generated.py", "gen/x.txt")
            if not rules.is_ignored(f, False)}
    assert ours == {"sub/keep.py", "gen/generated.py"}
    assert seen_by_git == ours | {"gen/x.txt"}  # *.txt: our config's ignore, not git's


def test_directory_created_during_a_rescan_stays_watched(project: Path, tmp_path: Path,
                                                         start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    for i in range(3000):
        (project / f"d{i}").mkdir()
    d = start_daemon(project)
    os.kill(d.pid, signal.SIGHUP)  # a reload rescans the tree, in slices
    time.sleep(0.05)
    (project / "fresh").mkdir()
    wait_for(lambda: "configuration reloaded" in d.log, what="reload")
    wait_for(lambda: inotify_watches(d.pid) == 3002, what="fresh watched")
    (project / "fresh" / "x.txt").write_text("x")
    wait_for(lambda: "fresh/x.txt" in ran_files(log), what="edit in the fresh directory")
    # and a config saved during a reload is read once more after it
    os.kill(d.pid, signal.SIGHUP)
    time.sleep(0.05)
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"])
                 + "[checks.two]\n" + record_check(tmp_path / "two.jsonl", ["*.md"]))
    wait_for(lambda: d.log.count("configuration reloaded") >= 3, what="second reload")
    (project / "fresh" / "y.md").write_text("x")
    wait_for(lambda: read_runs(tmp_path / "two.jsonl"), what="the new check runs")


def test_a_storm_is_two_runs_and_loses_nothing(project: Path, tmp_path: Path,
                                               start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))  # debounce 0
    start_daemon(project)
    for i in range(3000):  # a branch switch: files written back to back
        (project / f"s{i}.txt").write_text("x")
    wait_for(lambda: ran_files(log) >= {f"s{i}.txt" for i in range(3000)}, what="all files")
    time.sleep(0.5)
    # the run the first change started, and one after the storm (some slack for a writer
    # that pauses 50 ms under load)
    assert len(read_runs(log)) <= 3


def test_overflow_while_the_snapshot_is_taken_loses_nothing(project: Path, tmp_path: Path,
                                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    write_config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    for i in range(3000):
        (project / f"d{i}").mkdir()
        (project / f"d{i}" / "old.txt").write_text("old")
    d = start_daemon(project)
    os.kill(d.pid, signal.SIGSTOP)  # right after READY: the snapshot is not taken yet
    try:
        for i in range(3000):
            (project / f"d{i}" / "old.txt").write_text("changed")
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        for i in range(limit + 1000):
            (project / f"d{i % 3000}" / f"new{i}.txt").write_text("x")
    finally:
        os.kill(d.pid, signal.SIGCONT)
    expected = {f"d{i}/old.txt" for i in range(3000)}
    wait_for(lambda: ran_files(log) >= expected, timeout=120, what="every changed file")
