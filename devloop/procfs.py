"""Reading /proc: one parser for `/proc/PID/stat`, cmdline and the boot id.

Everything here reads kernel-made text about other processes, which may vanish or
be another user's at any moment: each reader returns None instead of raising.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that devloop uses."""

    pid: int
    state: str  # R, S, D, Z (zombie), ...
    pgid: int
    start_time: int  # field 22: clock ticks after boot; with the PID it names one process


def stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat, or None when the process is gone or the line is unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and ")": split after its last ")"
    _, sep, rest = raw.rpartition(b")")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    try:
        return ProcStat(pid=pid, state=fields[0].decode("ascii", "replace"),
                        pgid=int(fields[2]), start_time=int(fields[19]))
    except ValueError:
        return None


def cmdline(pid: int) -> list[str] | None:
    """The process's argv (undecodable bytes kept as surrogates), or None when unreadable.

    A kernel thread or a zombie has an empty command line: [].
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw else []


def boot_id() -> str:
    """This boot's random id: a PID or start time recorded under another boot means nothing."""
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""
