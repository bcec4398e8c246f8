"""Containment of check processes beyond their process group.

- The daemon is a child subreaper: a grandchild that double-forks out of its
  check's group is re-parented to us, not to init, so we can still kill it.
- The process groups of running checks are listed in `.devloop/checks.pids`, so a
  daemon restarted after a SIGKILL kills what the dead one left running.
  (PR_SET_PDEATHSIG would kill a check's first process at once, but it needs a
  preexec_fn, which makes every spawn a full fork: 3 ms instead of 0.2 ms here.)
Under systemd the unit's cgroup catches everything anyway; this is for the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path

from devloop import procfs, statedir
from devloop.core.atomicfile import atomic_write
from devloop.errors import DevloopError

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
PIDS_NAME = "checks.pids"
MAX_LEDGER_BYTES = 64 * 1024
PID_LIMIT = 1 << 22  # the kernel's PID_MAX_LIMIT

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become a child subreaper: %s", os.strerror(ctypes.get_errno()))


class GroupLedger:
    """`.devloop/checks.pids`: this boot's id, then "pgid start_time" of each running check.

    Read back only by the next daemon, and only as a hint: a group is killed when its
    first process still runs with the very start time recorded (so a reused PID is
    never taken for it), in the same boot, and is ours to signal.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PIDS_NAME
        self.groups: dict[int, int] = {}

    def add(self, pgid: int) -> None:
        found = procfs.stat(pgid)
        if found is not None:
            self.groups[pgid] = found.start_time
            self._write()

    def remove(self, pgid: int) -> None:
        if self.groups.pop(pgid, None) is not None:
            self._write()

    def _write(self) -> None:
        text = f"boot {procfs.boot_id()}\n" + "".join(
            f"{g} {s}\n" for g, s in self.groups.items())
        try:
            atomic_write(self.path, text.encode("ascii"))
        except OSError as exc:
            log.debug("cannot record check process groups: %s", exc)

    def _read(self) -> dict[int, int]:
        """The recorded groups; {} for a ledger that is missing, foreign or from another boot."""
        try:
            raw = statedir.read_private(self.path, MAX_LEDGER_BYTES)
        except FileNotFoundError:
            return {}
        except (OSError, DevloopError) as exc:
            log.warning("ignoring %s: %s", self.path, getattr(exc, "message", exc))
            return {}
        lines = raw.decode("ascii", "replace").splitlines()
        if not lines or lines[0] != f"boot {procfs.boot_id()}":
            log.info("ignoring %s: written before the last reboot", self.path)
            return {}
        recorded: dict[int, int] = {}
        for line in lines[1:]:
            parts = line.split()
            if (len(parts) == 2 and all(p.isdigit() and len(p) < 20 for p in parts)
                    and 1 < int(parts[0]) < PID_LIMIT):
                recorded[int(parts[0])] = int(parts[1])
        return recorded

    def kill_leftovers(self) -> int:
        """Kill the groups a previous daemon left running; returns how many groups.

        Never raises: what a dead daemon left behind must not stop this one starting.
        """
        killed = 0
        for pgid, start in self._read().items():
            leader = procfs.stat(pgid)
            if leader is None or leader.pgid != pgid or leader.start_time != start:
                continue  # gone, or its PID now names another process: not ours to kill
            try:
                if os.stat(f"/proc/{pgid}").st_uid != os.geteuid():
                    continue
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, FileNotFoundError):
                continue
            except OSError as exc:
                log.warning("cannot kill process group %d left by a previous daemon: %s",
                            pgid, exc.strerror)
                continue
            killed += 1
        with contextlib.suppress(OSError):
            self.path.unlink()
        if killed:
            log.warning("killed %d check process groups left running by a previous daemon",
                        killed)
        return killed


LIVE_LEADERS: set[int] = set()  # first processes of running checks, until asyncio reaps them


def reap_orphans() -> int:
    """Kill and reap children that are not running checks: escaped, re-parented grandchildren."""
    me = os.getpid()
    count = 0
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            children = Path(f"/proc/{me}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child in LIVE_LEADERS:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                # not yet dead: reaped by the next sweep instead of blocking the loop
                os.waitpid(child, os.WNOHANG)
            count += 1
    return count
