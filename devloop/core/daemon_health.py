"""The heartbeat file, `.devloop/daemon.heartbeat`, and the health check that reads it.

Standard library only, so a monitoring host can import it cheaply. The writer
replaces the file atomically and never writes through a symlink; the reader
never follows one and never raises.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devloop import procfs, safeio
from devloop.core.atomicfile import atomic_write

STATE_DIR = ".devloop"
HEARTBEAT_NAME = "daemon.heartbeat"
MAX_HEARTBEAT_BYTES = 64 * 1024
FUTURE_SLACK_S = 5.0
DEFAULT_INTERVAL_S = 30.0
MISSING = "missing"

HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"
ERROR = "ERROR"


def heartbeat_path(project_dir: str | os.PathLike[str]) -> Path:
    return Path(project_dir) / STATE_DIR / HEARTBEAT_NAME


def _padded(data: dict[str, Any]) -> bytes:
    """JSON padded with spaces to whole 4 KiB blocks, so that a later record fits in place."""
    raw = json.dumps(data).encode()
    size = (len(raw) // 4096 + 1) * 4096
    return raw + b" " * (size - len(raw) - 1) + b"\n"


def write_heartbeat(state_dir: Path, data: dict[str, Any], *, target: Path | None = None,
                    mode: int = 0o600) -> None:
    """Replace the heartbeat atomically.

    `target` (default `state_dir/daemon.heartbeat`) is also the published copy of
    `health_file`, created `mode` 0640 so that the group of a setgid directory (the
    monitoring user's) may read it. On a full disk the new file cannot be created: the
    record is then written over the old one in place (same size, already allocated), so
    the daemon can still say why it is unhealthy.
    """
    raw = _padded(data)
    target = state_dir / HEARTBEAT_NAME if target is None else target
    try:
        atomic_write(target, raw, mode)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and _overwrite(target, raw):
            return
        raise


def _overwrite(target: Path, raw: bytes) -> bool:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != len(raw):
            return False
        return os.pwrite(fd, raw, 0) == len(raw)
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_heartbeat(state_dir: Path, *, target: Path | None = None) -> None:
    """At a clean stop; a file that cannot be removed is left for the PID check to judge."""
    with contextlib.suppress(OSError):
        os.unlink(state_dir / HEARTBEAT_NAME if target is None else target)


def heartbeat_record(*, pid: int, uptime_seconds: float, interval_seconds: float,
                     project: str, watches: int, rescans: int, problem: str | None,
                     checks: dict[str, dict[str, Any]], overflows: int = 0) -> dict[str, Any]:
    """The heartbeat: liveness, plus the counters that `devloop metrics` exposes.

    `checks` maps a check's name to {"runs": {outcome: count since start},
    "last_duration_seconds", "last_success_timestamp" (unix or null), "failing" (bool),
    "failing_since" (unix or null)}; see `validate` for every field a reader accepts.
    """
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "pid": pid,
        "uptime_seconds": round(uptime_seconds, 3),
        "interval_seconds": interval_seconds,
        "project": project,
        "watches": watches,
        "rescans": rescans,
        "overflows": overflows,
        "problem": problem,
        "checks": checks,
    }


# -- reading: any file content gives an answer, never an exception ----------------------

def _result(status: str, reason: str, message: str, **known: Any) -> dict[str, Any]:
    return {"status": status, "healthy": status == HEALTHY, "reason": reason,
            "message": message, **known}


def _read(path: Path) -> tuple[bytes | None, str | None]:
    """(content, None) or (None, why not); the error texts are the health messages."""
    try:
        fd = safeio.open_regular(path)
    except FileNotFoundError:
        return None, MISSING
    except safeio.NotRegularFile:
        return None, f"{path} is not a regular file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path} is a symlink: refusing to follow it"
        return None, f"cannot open {path}: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if st.st_size > MAX_HEARTBEAT_BYTES:
            return None, f"{path} is too large ({st.st_size} bytes)"
        return os.read(fd, MAX_HEARTBEAT_BYTES + 1), None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    finally:
        os.close(fd)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number")  # json.loads would accept NaN and Infinity


def parse(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a valid heartbeat, else (None, why it is corrupt)."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..."
        return None, "not valid JSON"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    why = validate(data)
    return (None, why) if why else (data, None)


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: object, *, positive: bool = False) -> bool:
    """A finite number >= 0 (> 0 with `positive`) below 1e12: never NaN, inf or negative."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and (value > 0 if positive else value >= 0) and value < 1e12)


def _optional(value: object, ok: bool) -> bool:
    return value is None or ok


def validate(data: dict[str, Any]) -> str | None:
    """Why this heartbeat is corrupt (a field of the wrong type or range), or None.

    pid, timestamp and uptime_seconds are required; every other field the daemon
    writes is checked when present, so that no reader exports NaN or a negative counter.
    """
    if not _is_int(data.get("pid"), 1):
        return "'pid' is not a positive integer"
    if not _is_number(data.get("uptime_seconds")):
        return "'uptime_seconds' is not a number"
    if "interval_seconds" in data and not _is_number(data["interval_seconds"], positive=True):
        return "'interval_seconds' is not a positive number"
    stamp = data.get("timestamp")
    if not isinstance(stamp, str):
        return "'timestamp' is not a string"
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return "'timestamp' is not ISO 8601"
    if when.tzinfo is None:
        return "'timestamp' has no UTC offset"
    try:
        unix = when.timestamp()
    except (OverflowError, ValueError, OSError):
        unix = -1.0
    if not 0 <= unix < 1e11:  # exported as a Unix time: never before 1970
        return "'timestamp' is out of range"
    if data["uptime_seconds"] > unix:  # the start time, exported too, would be before 1970
        return "'uptime_seconds' is out of range"
    for key in ("watches", "rescans", "overflows"):
        if key in data and not _is_int(data[key], 0):
            return f"'{key}' is not a count"
    for key in ("project", "problem"):
        if not _optional(data.get(key), isinstance(data.get(key), str)):
            return f"'{key}' is not a string"
    checks = data.get("checks", {})
    if not isinstance(checks, dict):
        return "'checks' is not an object"
    for name, c in checks.items():
        if not isinstance(c, dict):
            return f"check {name!r} is not an object"
        runs = c.get("runs", {})
        if not isinstance(runs, dict) or not all(_is_int(n, 0) for n in runs.values()):
            return f"check {name!r}: 'runs' is not a map of counts"
        for key in ("last_duration_seconds", "last_success_timestamp", "failing_since"):
            if not _optional(c.get(key), _is_number(c.get(key))):
                return f"check {name!r}: {key!r} is not a number"
        if not isinstance(c.get("failing", False), bool):
            return f"check {name!r}: 'failing' is not true or false"
    return None


def timestamp(record: dict[str, Any]) -> float:
    """The Unix time of a validated record."""
    return datetime.fromisoformat(record["timestamp"]).timestamp()


def interval(record: dict[str, Any]) -> float:
    return float(record.get("interval_seconds", DEFAULT_INTERVAL_S))


# -- is that PID the daemon of this project? ---------------------------------------------

_WATCH_VALUE_OPTIONS = {"--log-max-bytes", "--log-backups", "--ready-timeout"}


def watch_dir(args: list[str]) -> str | None:
    """The DIR of a `devloop watch [OPTIONS] [DIR]` command line, or None if it is not one.

    The daemon runs as `.../bin/devloop watch ...` (argv[0] the script, or the
    interpreter followed by the script) or as `python -m devloop watch ...`; any other
    command line, even one holding the words (`watch -n1 devloop status`), is not it.
    """
    i = 0
    if args and os.path.basename(args[0]).startswith("python"):
        i = 1
        while i < len(args) and args[i].startswith("-") and args[i] != "-m":
            i += 2 if args[i] in ("-X", "-W") else 1
        if args[i:i + 2] == ["-m", "devloop"]:
            i += 2
        elif i < len(args) and os.path.basename(args[i]) == "devloop":
            i += 1
        else:
            return None
    elif args and os.path.basename(args[0]) == "devloop":
        i = 1
    else:
        return None
    if args[i:i + 1] != ["watch"]:
        return None
    rest = args[i + 1:]
    if (rest and not rest[-1].startswith("-")
            and (len(rest) < 2 or rest[-2] not in _WATCH_VALUE_OPTIONS)):
        return rest[-1]
    return "."


def _same_dir(candidates: set[str], wanted: set[str]) -> bool:
    def forms(path: str) -> set[str]:
        return {os.path.normpath(path), os.path.realpath(path)}
    return bool(set().union(*map(forms, candidates)) & set().union(*map(forms, wanted)))


def is_daemon_of(pid: int, projects: set[str]) -> bool | None:
    """True if `pid` runs `devloop watch` on one of these paths (the project as given, and
    as the daemon named it); False if not; None when /proc does not say.

    A relative DIR is resolved against the process's cwd when it can be read; the
    detached daemon's cwd is / and another user's cannot be read: then the command line
    alone decides.
    """
    argv = procfs.cmdline(pid)
    if argv is None:  # gone, or hidden from us (mount option hidepid)
        return False if not _alive(pid) else None
    if not argv:
        return None  # a zombie, or a kernel thread: nothing to compare
    directory = watch_dir(argv)
    if directory is None:
        return False
    if not os.path.isabs(directory):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return True
        if cwd == "/":
            return True
        directory = os.path.join(cwd, directory)
    return _same_dir({directory}, projects)


def _alive(pid: int) -> bool:
    """Running, and not a zombie: a killed daemon nobody has reaped yet is dead too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    found = procfs.stat(pid)
    return found is None or found.state != "Z"  # None: hidden (hidepid), kill() said it exists


# -- the verdict -------------------------------------------------------------------------

def check_daemon_health(project_dir: str | os.PathLike[str],
                        heartbeat: Path | None = None) -> dict[str, Any]:
    """HEALTHY, UNHEALTHY or ERROR, with a `reason` code and a message; never raises.

    `heartbeat` is a published copy (`health_file`) to read instead of the private one.
    """
    return assess(project_dir, heartbeat)[0]


def assess(project_dir: str | os.PathLike[str],
           heartbeat: Path | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The health verdict and the validated record it was made from (None if there is
    none), from one read of the file; never raises."""
    try:
        health = _check(Path(project_dir), heartbeat)
    except Exception as exc:  # never raise: a monitoring plugin must always get an answer
        return _result(ERROR, "failed", f"health check failed: {exc!r}"), None
    return health, health.pop("record", None)


def _check(project: Path, heartbeat: Path | None) -> dict[str, Any]:
    try:
        is_dir = stat.S_ISDIR(os.stat(project).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = False
    except OSError:
        is_dir = True  # e.g. a monitoring user without search access: the copy decides
    if not is_dir:
        return _result(ERROR, "no_project", f"no such project directory: {project}")
    path = heartbeat or heartbeat_path(project)
    raw, why = _read(path)
    if raw is None:
        if why == MISSING:
            return _result(UNHEALTHY, "missing",
                           f"no heartbeat file ({path}): the daemon is not running")
        return _result(ERROR, "unreadable", str(why))
    data, why = parse(raw)
    if data is None:
        return _result(ERROR, "corrupt", f"{path} is corrupt: {why}")
    pid, every = data["pid"], interval(data)
    age = time.time() - timestamp(data)
    known: dict[str, Any] = {
        "pid": pid,
        "uptime_seconds": round(float(data["uptime_seconds"]) + max(age, 0.0), 1),
        "last_heartbeat": datetime.fromisoformat(data["timestamp"]).isoformat(),
        "age_seconds": round(age, 1),
        "interval_seconds": every,
        "record": data,
    }
    if age < -FUTURE_SLACK_S:
        return _result(UNHEALTHY, "future", f"heartbeat timestamp is {-age:.0f}s in the future",
                       **known)
    # a dead or foreign PID is final, whatever the heartbeat's age: never back to "stale"
    if not _alive(pid):
        return _result(UNHEALTHY, "dead",
                       f"daemon PID {pid} is not running (it crashed or was killed)", **known)
    # the record's own `project` is the writer's claim, never a second name to accept: a
    # heartbeat of another project (a copied or planted health_file) is foreign
    claimed = data.get("project")
    if (isinstance(claimed, str) and claimed and not _same_dir({claimed}, {str(project)})) \
            or is_daemon_of(pid, {str(project)}) is False:
        return _result(UNHEALTHY, "foreign",
                       f"PID {pid} is not the devloop daemon of {project} (stale heartbeat)",
                       **known)
    if age > 2 * every:
        return _result(
            UNHEALTHY, "stale",
            f"last heartbeat {age:.0f}s ago, more than twice its interval ({every:g}s): "
            "the daemon is hung or stopped, or cannot write .devloop/ (read-only? full?)", **known)
    problem = data.get("problem")
    if problem:
        return _result(UNHEALTHY, "problem", f"daemon reports a problem: {problem[:500]}",
                       **known)
    return _result(HEALTHY, "ok", f"Last heartbeat {max(age, 0):.0f}s ago", **known)
