"""`devloop watch DIR` without a process manager: a properly detached daemon.

Double fork with a new session, standard streams on /dev/null, umask 022 and cwd /,
so the daemon never holds a terminal or a mount busy. The parent does not guess: the
daemon writes to a pipe when it is ready (at the same point it sends READY=1 under
systemd) or why it failed, and the parent reports that with the PID and exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import select
import time
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path

from devloop import statedir
from devloop.config import Config
from devloop.daemon import Daemon, use_pidfd_child_watcher
from devloop.errors import EX_CANTCREAT, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, DevloopError
from devloop.systemd import Notifier, setup_logging

log = logging.getLogger("devloop")

LOG_NAME = "devloop.log"
MANAGER_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
               "LISTEN_FDNAMES", "JOURNAL_STREAM")


@dataclass(frozen=True)
class Started:
    """What the parent learned: `code` is 0 when the daemon is ready, else its exit status."""

    pid: int | None
    code: int
    message: str


def log_path(state_dir: Path) -> Path:
    return state_dir / LOG_NAME


class PrivateLogHandler(RotatingFileHandler):
    """devloop.log, opened like every state file (no symlink, ours, not shared-writable).

    Like WatchedFileHandler, it reopens the file when the name no longer leads to the
    file it writes (`.devloop` deleted and recreated, or rotated by hand); until a new
    one can be opened it keeps writing to the old one rather than losing lines.
    """

    def _open(self) -> io.TextIOWrapper:
        fd = statedir.open_private(Path(self.baseFilename),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None:
            try:
                st = os.lstat(self.baseFilename)
                moved = statedir.identity(st) != statedir.identity(os.fstat(self.stream.fileno()))
            except OSError:
                moved = True
            if moved:
                with contextlib.suppress(OSError, DevloopError):
                    new = self._open()
                    self.stream.close()
                    self.stream = new
        super().emit(record)


def start(root: Path, cfg: Config, *, max_bytes: int, backups: int, timeout: float) -> Started:
    """Fork the daemon off and wait for its word; returns in the parent only."""
    state_dir = statedir.ensure(root)  # fail here, on the user's terminal, when it cannot
    read_fd, write_fd = os.pipe()  # not inherited by exec'd checks (O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # first child: new session, then fork again so it can never get a tty
        os.close(read_fd)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(EX_OK)
            _daemon(root, cfg, state_dir, write_fd, max_bytes, backups)
        finally:
            os._exit(EX_SOFTWARE)
    os.close(write_fd)
    os.waitpid(pid, 0)  # the first child exits at once
    try:
        return _wait(read_fd, timeout, log_path(state_dir))
    finally:
        os.close(read_fd)


def _wait(fd: int, timeout: float, logfile: Path) -> Started:
    deadline = time.monotonic() + timeout
    buf = b""
    pid: int | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return Started(pid, EX_TEMPFAIL,
                           f"daemon PID {pid} is not ready after {timeout:g}s: it is still "
                           f"running; see {logfile}")
        chunk = os.read(fd, 4096)
        if not chunk:
            return Started(pid, EX_SOFTWARE,
                           f"daemon PID {pid} died before it was ready; see {logfile}")
        *lines, buf = (buf + chunk).split(b"\n")
        for line in lines:
            word, _, rest = line.decode("utf-8", "replace").partition(" ")
            if word == "pid":
                pid = int(rest)
            elif word == "ready":
                return Started(pid, EX_OK, f"daemon PID {pid} is ready; log: {logfile}")
            elif word == "exit":
                code_text, _, why = rest.partition(" ")
                code = int(code_text)
                return Started(pid, code or EX_SOFTWARE,
                               f"{why} (daemon PID {pid} exited with status {code})")


def _daemon(root: Path, cfg: Config, state_dir: Path, fd: int, max_bytes: int,
            backups: int) -> None:
    """The daemon itself, in the grandchild; ends the process, never returns."""
    os.umask(0o022)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    os.closerange(3, fd)  # inherited fds would keep a caller's pipe open ($(devloop watch))
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    for name in MANAGER_ENV:  # a manager above the shell must not take us for its service
        os.environ.pop(name, None)
    pipe: list[int] = [fd]

    def send(line: str) -> None:
        if pipe:
            with contextlib.suppress(OSError):  # the parent gave up waiting: nobody to tell
                os.write(pipe[0], f"{line}\n".encode())

    def ready() -> None:
        send("ready")
        os.close(pipe.pop())

    send(f"pid {os.getpid()}")
    code, why = EX_SOFTWARE, "internal error"
    try:
        try:
            handler = PrivateLogHandler(log_path(state_dir), maxBytes=max_bytes,
                                        backupCount=backups, encoding="utf-8")
        except OSError as exc:
            raise DevloopError(f"cannot open {log_path(state_dir)}: {exc.strerror}",
                               EX_CANTCREAT) from None
        setup_logging(str(root), handler=handler)
        statedir.acquire(state_dir, root)  # held until this process exits
        use_pidfd_child_watcher()
        daemon = Daemon(root, state_dir, cfg, Notifier(environ={}), on_ready=ready)
        code = asyncio.run(daemon.run())
        why = "the daemon stopped before it was ready"
    except DevloopError as exc:
        code, why = exc.code, exc.message
        log.error("%s", why)
    except BaseException as exc:
        why = f"internal error: {exc!r}"
        log.exception("internal error")
    send(f"exit {code} {why}")
    logging.shutdown()
    os._exit(code)
