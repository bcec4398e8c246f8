"""The systemd glue: sd_notify messages (through `sdnotify`) and logging to journald.

Everything here is a no-op outside systemd: with no NOTIFY_SOCKET nothing is
sent, and with stderr not connected to the journal, logs are plain lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping

import sdnotify

from devloop.logonce import Trouble
from devloop.printable import escape_controls

log = logging.getLogger(__name__)


def _safe(text: str) -> str:
    """One line, and only characters sdnotify can encode (it sends latin-1)."""
    text = " ".join(text.split())
    return text.encode("ascii", "replace").decode("ascii")


class Notifier:
    """sd_notify, sent only when NOTIFY_SOCKET is set; a failed send is logged, not swallowed."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self._notifier: sdnotify.SystemdNotifier | None = None
        self._trouble = Trouble(log, f"sd_notify to {self.socket_path} works again")
        if self.socket_path:
            try:
                self._notifier = sdnotify.SystemdNotifier(debug=True)
                # never block the loop on a receiver that does not read: a full socket
                # drops the message (and says so) instead of hanging the daemon
                self._notifier.socket.setblocking(False)
            except OSError as exc:
                log.error("cannot reach NOTIFY_SOCKET %s: %s", self.socket_path, exc)
        usec = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def send(self, *fields: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify("\n".join(fields))
        except OSError as exc:
            self._trouble.report(f"sd_notify to {self.socket_path} failed: {exc}")
        else:
            self._trouble.clear()  # once, not once per watchdog ping

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={_safe(status)}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={_safe(status)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")




class OneLineFilter(logging.Filter):
    """Every message, arguments included, becomes one printable line (tracebacks still
    follow on their own lines: they come from our code, not from the project)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = escape_controls(record.getMessage())
        record.args = None
        return True


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """systemd sets JOURNAL_STREAM=dev:ino of the stream it connected to stderr."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(project: str, *, handler: logging.Handler | None = None,
                  level: int = logging.INFO) -> None:
    """journald with our own fields under systemd; otherwise the given handler or stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if handler is None and stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="devloop", DEVLOOP_PROJECT=project)
        handler.setFormatter(logging.Formatter("%(message)s"))
    elif handler is None:
        handler = logging.StreamHandler(sys.stderr)
    if handler.formatter is None:
        handler.setFormatter(
            logging.Formatter("%(asctime)s devloop[%(process)d] %(levelname)s %(message)s")
        )
    handler.addFilter(OneLineFilter())
    root.addHandler(handler)
    root.setLevel(level)
