"""Exit codes (sysexits) and the one exception type the CLI turns into them."""

from __future__ import annotations

EX_OK = 0
EX_FAIL = 1  # a check failed (run), the daemon is unhealthy (daemon-status)
EX_USAGE = 64
EX_DATAERR = 65  # a value cannot be written safely into a service file
EX_NOINPUT = 66
EX_NOUSER = 67  # service install: no such user
EX_UNAVAILABLE = 69  # status --wait: no daemon watches the project
EX_SOFTWARE = 70  # the detached daemon died before it was ready
EX_OSERR = 71  # inotify watch limit reached at start-up
EX_CANTCREAT = 73  # .devloop/ cannot be created or written
EX_IOERR = 74  # .devloop/ was deleted and cannot be recreated from inside the sandbox
EX_TEMPFAIL = 75  # another daemon already watches the project
EX_CONFIG = 78


class DevloopError(Exception):
    """An error with a one-line message for the user and the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
