"""`.devloop/` and what is read from it are untrusted: real second users, real symlinks,
real foreign processes, real `rm -rf` (issue 9 item 3, issue 10 item 2)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_proc import DaemonProc, alive, devloop, record_check, status_json, wait_for

from devloop import procfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add test users")

OWNER = "dlstate-owner"  # runs a daemon in its own project
OTHER = "dlstate-other"  # a second local user sharing the project
START = Callable[..., DaemonProc]
TOML = "heartbeat_interval = 1\n[checks.all]\n"


def user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        r = subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/bin/sh",
                            name], capture_output=True, text=True)
        assert r.returncode in (0, 9), r.stderr  # 9: created meanwhile by a parallel test
        return pwd.getpwnam(name)


def as_user(name: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    u = user(name)
    return subprocess.run(["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}",
                           "--init-groups", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": "/"}, **kw)  # type: ignore[call-overload]


def devloop_as(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return as_user(name, [sys.executable, "-m", "devloop", *args], cwd="/")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every test user can reach (pytest's tmp_path is root's, 0700)."""
    d = Path(tempfile.mkdtemp(prefix="dlstate-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def group_project(shared: Path, tmp_log: Path) -> Path:
    """A project every local user may write (a group-shared tree, at its worst)."""
    proj = shared / "proj"
    proj.mkdir()
    proj.chmod(0o1777)
    (proj / "devloop.toml").write_text(TOML + record_check(tmp_log, ["*.txt"]))
    return proj


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# -- a foreign or shared .devloop ---------------------------------------------------------

@pytest.mark.parametrize("foreground", [True, False])
def test_foreign_state_dir_is_refused(shared: Path, foreground: bool) -> None:
    proj = group_project(shared, shared / "runs")
    victim = shared / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA owner\n")
    state = proj / ".devloop"
    as_user(OTHER, ["mkdir", "-m", "0755", str(state)]).check_returncode()
    as_user(OTHER, ["ln", "-s", str(victim), str(state / "devloop.log")]).check_returncode()
    args = ["watch", *(["--foreground"] if foreground else []), str(proj)]
    try:
        r = subprocess.run([sys.executable, "-m", "devloop", *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 73, r
        line = one_error_line(r)
        assert f"refusing to use {state}" in line and "belongs to uid" in line, line
        assert victim.read_text() == "ssh-ed25519 AAAA owner\n"
    finally:
        devloop("stop", str(proj))


def test_shared_writable_state_dir_is_refused(shared: Path) -> None:
    proj = group_project(shared, shared / "runs")
    (proj / ".devloop").mkdir()
    (proj / ".devloop").chmod(0o777)
    r = devloop("watch", "--foreground", str(proj))
    assert r.returncode == 73
    assert "group or others may write it" in one_error_line(r)


def test_symlinked_log_is_not_followed(shared: Path) -> None:
    """The owner's own .devloop with devloop.log planted as a link to authorized_keys."""
    proj = group_project(shared, shared / "runs")
    victim = shared / "authorized_keys"
    victim.write_text("precious\n")
    (proj / ".devloop").mkdir(mode=0o700)
    (proj / ".devloop" / "devloop.log").symlink_to(victim)
    try:
        r = devloop("watch", str(proj))
        assert r.returncode == 73, r
        assert "devloop.log: it is a symlink" in one_error_line(r)
        assert victim.read_text() == "precious\n"
    finally:
        devloop("stop", str(proj))


@pytest.mark.parametrize("name", ["daemon.lock", "devloop.db", "devloop.db-wal", "devloop.log",
                                  "checks.pids"])
def test_a_state_file_of_another_user_is_refused(shared: Path, name: str) -> None:
    """The owner's private .devloop holding a file root (any other user) put there."""
    proj = shared / "proj"
    (proj / ".devloop").mkdir(parents=True, mode=0o700)
    (proj / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    (proj / ".devloop" / name).write_text("1 2\n")
    u = user(OWNER)
    for path in (proj, proj / "devloop.toml", proj / ".devloop"):
        os.chown(path, u.pw_uid, u.pw_gid)
    r = devloop_as(OWNER, "watch", str(proj))
    try:
        if name == "checks.pids":  # only a hint: ignored, and the daemon starts
            assert r.returncode == 0, r
            log = (proj / ".devloop" / "devloop.log").read_text()
            assert "ignoring" in log and "belongs to uid 0" in log, log
        else:
            assert r.returncode == 73, r
            assert f"{name}: it belongs to uid 0" in one_error_line(r)
    finally:
        devloop_as(OWNER, "stop", str(proj))


def test_newline_in_a_name_stays_on_its_log_line(shared: Path) -> None:
    """The owner's detached daemon logs a directory it cannot read, named by another user."""
    proj = shared / "proj"
    proj.mkdir(mode=0o1777)
    proj.chmod(0o1777)
    (proj / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["*.txt"]\n')
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIattacker other@host"
    as_user(OTHER, ["mkdir", "-m", "0", str(proj / f"evil\n{key}\r\x1b[2K")]).check_returncode()
    r = devloop_as(OWNER, "watch", str(proj))
    try:
        assert r.returncode == 0, r
        log = proj / ".devloop" / "devloop.log"
        wait_for(lambda: "evil" in log.read_text(errors="replace"), what="the warning")
        text = log.read_text(errors="replace")
        assert not any(line.startswith("ssh-ed25519") for line in text.splitlines()), text
        assert "\x1b" not in text and "\r" not in text
        assert f"evil\\n{key}\\r\\x1b[2K" in text
    finally:
        devloop_as(OWNER, "stop", str(proj))


# -- checks.pids ---------------------------------------------------------------------------

def sleeper(*, owner: str | None = None) -> subprocess.Popen[bytes]:
    """A process in its own group, like a check's first process."""
    argv = ["sleep", "1000"]
    if owner is not None:
        u = user(owner)
        argv = ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups",
                *argv]
    return subprocess.Popen(argv, start_new_session=True)


def plant_ledger(state: Path, boot: str, groups: dict[int, int]) -> None:
    state.mkdir(mode=0o700, exist_ok=True)
    (state / "checks.pids").write_text(f"boot {boot}\n" + "".join(
        f"{g} {s}\n" for g, s in groups.items()))


def start_time(pid: int) -> int:
    st = procfs.stat(pid)
    assert st is not None
    return st.start_time


@pytest.mark.parametrize("case", ["reused pid", "other boot"])
def test_ledger_never_kills_a_stranger(project: Path, start_daemon: START, case: str) -> None:
    """A reused PID is a process started later than the one recorded; a ledger from another
    boot names processes that are long gone. Both were killed before."""
    stranger = sleeper()
    try:
        recorded = start_time(stranger.pid) - (1 if case == "reused pid" else 0)
        boot = procfs.boot_id() if case == "reused pid" else "00000000-0000-0000-0000-0"
        plant_ledger(project / ".devloop", boot, {stranger.pid: recorded})
        (project / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
        start_daemon(project)
        assert stranger.poll() is None and alive(stranger.pid)
        ledger = project / ".devloop" / "checks.pids"  # rewritten by the daemon's own runs
        assert not ledger.exists() or f"{stranger.pid} " not in ledger.read_text()
    finally:
        stranger.kill()
        stranger.wait()


def test_ledger_naming_a_root_process_does_not_stop_the_daemon(shared: Path) -> None:
    """The owner's daemon, a ledger naming root's process group with its exact start time:
    it used to die with a PermissionError traceback on every start."""
    proj = shared / "proj"
    proj.mkdir()
    (proj / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    rootproc = sleeper()
    try:
        plant_ledger(proj / ".devloop", procfs.boot_id(),
                     {rootproc.pid: start_time(rootproc.pid)})
        u = user(OWNER)
        for p in (proj, proj / ".devloop", proj / ".devloop" / "checks.pids"):
            os.chown(p, u.pw_uid, u.pw_gid)
        r = devloop_as(OWNER, "watch", str(proj))
        assert r.returncode == 0, r
        assert "Traceback" not in (proj / ".devloop" / "devloop.log").read_text()
        assert rootproc.poll() is None
        stop = devloop_as(OWNER, "stop", str(proj))  # its own user verifies and stops it
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop
    finally:
        devloop_as(OWNER, "stop", str(proj))
        rootproc.kill()
        rootproc.wait()


def test_garbage_ledger_is_ignored(project: Path, start_daemon: START) -> None:
    state = project / ".devloop"
    state.mkdir(mode=0o700)
    (state / "checks.pids").write_bytes(b"boot \xff\n1 2\n-5 x\n99999999999999999999999 1\n"
                                        + b"9" * 70000)
    (project / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    d = start_daemon(project)
    assert d.proc.poll() is None


def test_ledger_of_this_boot_kills_the_left_group(project: Path, start_daemon: START) -> None:
    """The control: what the ledger is for still works, through the exact start time."""
    left = sleeper()
    try:
        plant_ledger(project / ".devloop", procfs.boot_id(), {left.pid: start_time(left.pid)})
        (project / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
        start_daemon(project)
        assert left.wait(timeout=30) == -signal.SIGKILL
    finally:
        left.kill()


# -- readers create nothing ----------------------------------------------------------------

def test_status_on_a_path_with_hash_opens_read_only_and_creates_nothing(shared: Path) -> None:
    proj = shared / "p#q?mode=rwc"
    proj.mkdir()
    (proj / "devloop.toml").write_text('[checks.ok]\ncommand = ["true"]\npatterns = ["*"]\n')
    assert devloop("run", str(proj)).returncode == 0
    # the URI once ended at '#': SQLite then opened ".../p" read-write, through a link
    target = shared / "created-through-a-link"
    (shared / "p").symlink_to(target)
    before = sorted(os.listdir(proj / ".devloop"))
    r = devloop("status", str(proj), "--json")
    assert r.returncode == 0, r.stderr
    assert not target.exists()
    assert sorted(os.listdir(proj / ".devloop")) == before  # no -wal / -shm made by a reader


def test_status_does_not_follow_a_planted_database_link(shared: Path) -> None:
    proj = shared / "proj"
    (proj / ".devloop").mkdir(parents=True, mode=0o700)
    nologin = shared / "nologin"
    (proj / ".devloop" / "devloop.db").symlink_to(nologin)
    r = devloop("status", str(proj))
    assert r.returncode == 66 and not nologin.exists()
    other = shared / "other"
    (other / ".devloop").mkdir(parents=True)
    (other / "devloop.toml").write_text('[checks.ok]\ncommand = ["true"]\npatterns = ["*"]\n')
    assert devloop("run", str(other)).returncode == 0
    (proj / ".devloop" / "devloop.db").unlink()
    (proj / ".devloop" / "devloop.db").symlink_to(other / ".devloop" / "devloop.db")
    r = devloop("status", str(proj))
    assert r.returncode == 66 and "symlink" in one_error_line(r)
    shutil.rmtree(proj / ".devloop")
    (proj / ".devloop").symlink_to(other / ".devloop")
    r = devloop("status", str(proj))
    assert r.returncode == 66 and "symlink" in one_error_line(r)


# -- devloop stop --------------------------------------------------------------------------

def test_stop_does_not_follow_a_state_dir_link(shared: Path, start_daemon: START) -> None:
    """A project whose .devloop is a link to another user's project: stop refuses it."""
    theirs = shared / "theirs"
    theirs.mkdir()
    (theirs / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    d = start_daemon(theirs)
    mine = shared / "mine"
    mine.mkdir()
    (mine / ".devloop").symlink_to(theirs / ".devloop")
    r = devloop("stop", str(mine))
    assert r.returncode == 73, r
    assert "not a directory (a symlink?)" in one_error_line(r)
    assert d.proc.poll() is None


HOLDER = textwrap.dedent("""\
    import fcntl, os, sys, time
    fd = os.open(sys.argv[-2], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\\n".encode())
    if sys.argv[-1] == "pass-to-child":
        if os.fork() == 0:
            time.sleep(1000)  # holds the inherited lock
            os._exit(0)
        os.close(fd)  # the taker keeps running but no longer has the lock open
    print("locked", flush=True)
    time.sleep(1000)
""")


@pytest.mark.parametrize("how", ["not a daemon", "pass-to-child"])
def test_stop_refuses_a_lock_holder_that_is_not_the_daemon(shared: Path, how: str) -> None:
    """/proc/locks names a process that is not a devloop watch with the lock open."""
    proj = shared / "proj"
    (proj / ".devloop").mkdir(parents=True, mode=0o700)
    lock = str(proj / ".devloop" / "daemon.lock")
    if how == "pass-to-child":  # looks like `devloop watch` on its command line
        script = shared / "devloop"
        argv = [sys.executable, str(script), "watch", lock, how]
    else:
        script = shared / "holder.py"
        argv = [sys.executable, str(script), lock, how]
    script.write_text(HOLDER)
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        r = devloop("stop", str(proj), "--timeout", "5")
        assert r.returncode == 75, r
        assert "refusing" in one_error_line(r)
        assert holder.poll() is None
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_stop_stops_the_real_daemon(project: Path, start_daemon: START) -> None:
    (project / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    d = start_daemon(project)
    r = devloop("stop", str(project))
    assert r.returncode == 0, r
    assert d.proc.wait(timeout=30) == 0


# -- the project or its .devloop deleted -----------------------------------------------------

def test_rm_rf_of_the_project_exits_66(project: Path, start_daemon: START) -> None:
    (project / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    (project / "src" / "deep").mkdir(parents=True)
    d = start_daemon(project)
    shutil.rmtree(project)
    assert d.proc.wait(timeout=30) == 66
    lines = [ln for ln in d.log.splitlines() if "deleted" in ln]
    assert lines and str(project) in lines[0], d.log


@pytest.mark.parametrize("how", ["rm -rf .devloop", "git clean -xdf"])
def test_deleted_state_dir_is_retaken(project: Path, tmp_path: Path, start_daemon: START,
                                      how: str) -> None:
    log = tmp_path / "runs"
    (project / "devloop.toml").write_text(TOML + record_check(log, ["*.txt"]))
    if how == "git clean -xdf":
        subprocess.run(["git", "init", "-q", str(project)], check=True)
    d = start_daemon(project)
    old_lock = os.stat(project / ".devloop" / "daemon.lock").st_ino
    if how == "git clean -xdf":
        subprocess.run(["git", "-C", str(project), "clean", "-qxdf"], check=True)
        (project / "devloop.toml").write_text(TOML + record_check(log, ["*.txt"]))
    else:
        shutil.rmtree(project / ".devloop")
    lock = project / ".devloop" / "daemon.lock"
    wait_for(lambda: lock.exists() and lock.stat().st_ino != old_lock, what="lock retaken")
    assert stat.S_IMODE((project / ".devloop").stat().st_mode) == 0o700
    second = devloop("watch", "--foreground", str(project))
    assert second.returncode == 75 and f"PID {d.pid}" in second.stderr, second
    (project / "a.txt").write_text("x")
    wait_for(lambda: status_json(project), what="a run stored in the new database")
    r = devloop("stop", str(project))
    assert r.returncode == 0 and f"PID {d.pid}" in r.stdout, r
    assert d.proc.wait(timeout=30) == 0


def test_detached_daemon_logs_into_the_recreated_state_dir(project: Path) -> None:
    (project / "devloop.toml").write_text(TOML + 'command = ["true"]\npatterns = ["x"]\n')
    r = devloop("watch", str(project))
    assert r.returncode == 0, r
    try:
        shutil.rmtree(project / ".devloop")
        log = project / ".devloop" / "devloop.log"
        wait_for(lambda: log.exists() and "recreated" in log.read_text(), what="the new log")
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        assert devloop("stop", str(project)).returncode == 0
