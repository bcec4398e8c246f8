"""Root's terminal never reaches a process of the user root acts for (issue 9 item 2).

`update-hooks` and `service install` run git and read devloop.toml as the project's
owner (installed.run_as). A git started there is the owner's process: the owner may
take its file descriptors (pidfd_getfd, as with ptrace). Were root's terminal among
them, the owner could read what root types next and write to root's screen, long after
devloop exits. A real user, a real pty, a real git held open on a FIFO by the user.
"""

from __future__ import annotations

import contextlib
import os
import pty
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("git") is None,
                                reason="needs root (a test user) and git")

OWNER = "dlrunas-owner"
ATTACKER = r"""
import ctypes, os, sys, time
uid, fifo, done = os.getuid(), sys.argv[1], set()
libc = ctypes.CDLL(None, use_errno=True)
while True:  # every git of the owner's, until the test ends
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if pid in done or os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "git":
                    continue
            pidfd = os.pidfd_open(int(pid))
        except OSError:
            continue
        done.add(pid)
        for n in (0, 1, 2):
            fd = libc.syscall(438, pidfd, n, 0)  # pidfd_getfd: as ptrace may
            if fd >= 0 and os.isatty(fd):
                os.write(fd, b"\r\nPWNED: the owner writes to root's terminal\r\n")
        print("git", flush=True)
        os.close(os.open(fifo, os.O_WRONLY))  # let it go on: it reads the FIFO to its end
    time.sleep(0.01)
"""


def _owner() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OWNER)
    except KeyError:
        r = subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell",
                            "/bin/sh", OWNER], capture_output=True, text=True)
        assert r.returncode in (0, 9), r.stderr
        return pwd.getpwnam(OWNER)


@pytest.fixture
def repo() -> Iterator[Path]:
    """The owner's repository, whose git config includes a FIFO that the owner holds."""
    u = _owner()
    top = Path(tempfile.mkdtemp(prefix="dlrunas-"))
    top.chmod(0o755)
    proj = top / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    fifo = top / "hold"
    os.mkfifo(fifo, 0o600)
    with open(proj / ".git/config", "a") as f:
        f.write(f"[include]\n\tpath = {fifo}\n")
    (proj / "devloop.toml").write_text('[checks.a]\ncommand = ["true"]\n')
    for p in [fifo, *proj.rglob("*"), proj]:
        os.lchown(p, u.pw_uid, u.pw_gid)
    yield proj
    shutil.rmtree(top, ignore_errors=True)


def test_a_git_run_as_the_owner_does_not_hold_roots_terminal(repo: Path) -> None:
    u = _owner()
    attacker = subprocess.Popen(["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}",
                                 "--init-groups", sys.executable, "-c", ATTACKER,
                                 str(repo.parent / "hold")], cwd="/",
                                stdout=subprocess.PIPE, text=True)
    pid, master = pty.fork()  # root, at a terminal
    if pid == 0:
        os.execvp(sys.executable, [sys.executable, "-m", "devloop", "update-hooks",
                                   str(repo), "--root", str(repo.parent / "root")])
    seen, done = b"", 0
    deadline = time.monotonic() + 90
    while not done and time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            with contextlib.suppress(OSError):  # EIO: nobody holds the terminal any more
                seen += os.read(master, 4096)
        done = os.waitpid(pid, os.WNOHANG)[0]
    while select.select([master], [], [], 0)[0]:  # what it wrote last
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    attacker.terminate()
    assert "git" in attacker.communicate(timeout=30)[0], "the owner's git never started"
    assert b"PWNED" not in seen, seen.decode(errors="replace")
