"""A problem said once when it starts (or changes) and once when it is over.

A daemon that logs the same failure at every event or heartbeat floods the journal and
buries the first cause; one that never says the problem is gone leaves the reader
guessing.
"""

from __future__ import annotations

import logging


class Trouble:
    """The one problem of one thing (a file the daemon writes, a socket), as last logged."""

    def __init__(self, logger: logging.Logger, recovered: str, level: int = logging.ERROR) -> None:
        self._log = logger
        self._recovered = recovered
        self._level = level
        self.problem: str | None = None

    def report(self, problem: str) -> bool:
        """Log `problem` unless it is the one already said; True when it was logged."""
        if problem == self.problem:
            return False
        self._log.log(self._level, "%s", problem)
        self.problem = problem
        return True

    def clear(self, recovered: str | None = None) -> bool:
        """Say the problem is over (once); True when there was one."""
        if self.problem is None:
            return False
        self._log.info("%s", recovered or self._recovered)
        self.problem = None
        return True
