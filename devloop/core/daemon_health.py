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
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE_DIR = ".devloop"
HEARTBEAT_NAME = "daemon.heartbeat"
MAX_HEARTBEAT_BYTES = 64 * 1024
FUTURE_SLACK_S = 5.0

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


def write_heartbeat(state_dir: Path, data: dict[str, Any]) -> None:
    """Write to a new private file in the same directory, then rename over the old one.

    On a full disk the new file cannot be created: the record is then written over
    the old one in place (same size, already allocated), so the daemon can still
    say why it is unhealthy.
    """
    raw = _padded(data)
    target = state_dir / HEARTBEAT_NAME
    try:
        fd, tmp = tempfile.mkstemp(prefix=".heartbeat-", dir=state_dir)  # O_EXCL, mode 0600
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and _overwrite(target, raw):
            return
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, target)  # replaces a planted symlink, never follows it
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
                and _overwrite(target, raw)):
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


def remove_heartbeat(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / HEARTBEAT_NAME)


def heartbeat_record(*, pid: int, uptime_seconds: float, interval_seconds: float,
                     project: str, watches: int, rescans: int, problem: str | None,
                     checks: dict[str, dict[str, Any]], overflows: int = 0) -> dict[str, Any]:
    """The heartbeat: liveness, plus the counters that `devloop metrics` exposes.

    `checks` maps a check's name to {"runs": {outcome: count since start},
    "last_duration_seconds", "last_success_timestamp" (unix or null), "failing" (bool)}.
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


def _result(status: str, message: str, **known: Any) -> dict[str, Any]:
    return {"status": status, "healthy": status == HEALTHY, "message": message, **known}


def _read(path: Path) -> tuple[bytes | None, str | None]:
    """(content, None) or (None, why not); the error texts are the health messages."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path} is a symlink: refusing to follow it"
        return None, f"cannot open {path}: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if st.st_mode & 61440 != 32768:
            return None, f"{path} is not a regular file"
        if st.st_size > MAX_HEARTBEAT_BYTES:
            return None, f"{path} is too large ({st.st_size} bytes)"
        return os.read(fd, MAX_HEARTBEAT_BYTES + 1), None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    finally:
        os.close(fd)


def read_heartbeat(project_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The heartbeat's JSON object, or None when missing or unreadable (for metrics)."""
    raw, _ = _read(heartbeat_path(project_dir))
    try:
        data = json.loads(raw.decode("utf-8")) if raw is not None else None
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_devloop_daemon(pid: int) -> bool | None:
    """True/False from the process's command line; None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return any("devloop" in a for a in args) and "watch" in args


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_daemon_health(project_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """HEALTHY, UNHEALTHY or ERROR, with a message; never raises."""
    try:
        return _check(Path(project_dir))
    except Exception as exc:  # never raise: a monitoring plugin must always get an answer
        return _result(ERROR, f"health check failed: {exc!r}")


def _check(project: Path) -> dict[str, Any]:
    path = heartbeat_path(project)
    raw, why = _read(path)
    if raw is None:
        if why == "missing":
            return _result(UNHEALTHY, f"no heartbeat file ({path}): the daemon is not running")
        return _result(ERROR, str(why))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _result(ERROR, f"{path} is not valid JSON")
    if not isinstance(data, dict):
        return _result(ERROR, f"{path} does not hold a JSON object")
    pid, uptime, stamp = data.get("pid"), data.get("uptime_seconds"), data.get("timestamp")
    interval = data.get("interval_seconds", 30)
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return _result(ERROR, f"{path}: 'pid' is not a positive integer")
    if isinstance(uptime, bool) or not isinstance(uptime, int | float) or not 0 <= uptime < 1e12:
        return _result(ERROR, f"{path}: 'uptime_seconds' is not a number", pid=pid)
    if (isinstance(interval, bool) or not isinstance(interval, int | float)
            or not 0 < interval < 1e9):  # also rejects nan and inf
        return _result(ERROR, f"{path}: 'interval_seconds' is not a positive number", pid=pid)
    if not isinstance(stamp, str):
        return _result(ERROR, f"{path}: 'timestamp' is not a string", pid=pid)
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return _result(ERROR, f"{path}: 'timestamp' is not ISO 8601", pid=pid)
    if when.tzinfo is None:
        return _result(ERROR, f"{path}: 'timestamp' has no UTC offset", pid=pid)
    age = (datetime.now(UTC) - when).total_seconds()
    known: dict[str, Any] = {
        "pid": pid,
        "uptime_seconds": round(float(uptime) + max(age, 0.0), 1),
        "last_heartbeat": when.isoformat(),
        "age_seconds": round(age, 1),
    }
    if age < -FUTURE_SLACK_S:
        return _result(UNHEALTHY, f"heartbeat timestamp is {-age:.0f}s in the future", **known)
    if age > 2 * interval:
        return _result(
            UNHEALTHY,
            f"last heartbeat {age:.0f}s ago, more than twice its interval ({interval:g}s): "
            "the daemon is hung or stopped, or cannot write .devloop/ (read-only? full?)",
            **known,
        )
    if not _alive(pid):
        return _result(UNHEALTHY, f"daemon PID {pid} is not running (it crashed or was killed)",
                       **known)
    if _is_devloop_daemon(pid) is False:
        return _result(UNHEALTHY, f"PID {pid} is not a devloop daemon (stale heartbeat)", **known)
    problem = data.get("problem")
    if problem:
        return _result(UNHEALTHY, f"daemon reports a problem: {str(problem)[:500]}", **known)
    return _result(HEALTHY, f"Last heartbeat {max(age, 0):.0f}s ago", **known)
