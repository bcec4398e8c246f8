"""`devloop.toml` -> frozen dataclasses, validated strictly.

Every problem is one line that names the file and the key, raised as a
DevloopError with exit code 78 (EX_CONFIG); the file is never rewritten.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pathspec

from devloop import safeio, tools
from devloop.errors import EX_CONFIG, DevloopError
from devloop.ignore import compile_spec, matchable
from devloop.tools import env as tool_env

CONFIG_NAME = "devloop.toml"
FILES_PLACEHOLDER = "{files}"

OnBusy = Literal["queue", "restart"]


@dataclass(frozen=True)
class Check:
    name: str
    command: tuple[str, ...]
    patterns: tuple[str, ...]
    shell: bool = False
    debounce_ms: int = 100
    timeout_s: float = 300.0
    run_on_start: bool = True
    on_busy: OnBusy = "queue"
    tool: str | None = None  # the adapter (devloop/tools/) by name; None: from the command
    spec: pathspec.GitIgnoreSpec = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", compile_spec(self.patterns))

    @property
    def takes_files(self) -> bool:
        return FILES_PLACEHOLDER in self.command

    def matches(self, relpath: str) -> bool:
        return self.spec.match_file(matchable(relpath))


@dataclass(frozen=True)
class Config:
    checks: tuple[Check, ...]
    ignore: tuple[str, ...] = ()
    max_parallel: int = 2
    heartbeat_interval: float = 30.0
    metrics_textfile: Path | None = None  # node_exporter textfile, rewritten each heartbeat
    health_file: Path | None = None  # a copy of the heartbeat a monitoring user may read


def _fail(where: str, key: str, problem: str) -> DevloopError:
    return DevloopError(f"{where}: {key}: {problem}", EX_CONFIG)


def _str_list(where: str, key: str, value: object, *, globs: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, key, "must be a list of strings")
    if globs:
        for v in value:
            try:
                compile_spec([v])
            except Exception as exc:  # pathspec raises several types for bad globs
                raise _fail(where, key, f"bad pattern {v!r}: {exc}") from None
    return tuple(value)


def _number(
    where: str, key: str, value: object, *, minimum: float, maximum: float,
    integer: bool = False,
) -> float:
    ok_types: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise _fail(where, key, "must be an integer" if integer else "must be a number")
    assert isinstance(value, int | float)
    if not minimum <= value <= maximum:  # also false for nan
        raise _fail(where, key, f"must be between {minimum:g} and {maximum:g}")
    return value


def _bool(where: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, key, "must be true or false")
    return value


def _check(where: str, name: str, table: object) -> Check:
    key = f"checks.{name}"
    if not isinstance(table, dict):
        raise _fail(where, key, "must be a table")
    known = {"command", "patterns", "shell", "debounce_ms", "timeout_s", "run_on_start", "on_busy",
             "tool"}
    for k in table:
        if k not in known:
            raise _fail(where, f"{key}.{k}", "unknown key")
    for required in ("command", "patterns"):
        if required not in table:
            raise _fail(where, f"{key}.{required}", "missing")
    shell = _bool(where, f"{key}.shell", table.get("shell", False))
    if shell:  # one string, as a shell script is written; a list of one string also works
        raw = table["command"]
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if not isinstance(raw, str):
            raise _fail(where, f"{key}.command", "with shell = true, must be one string")
        command: tuple[str, ...] = (raw,)
    else:
        command = _str_list(where, f"{key}.command", table["command"])
    if not command or not command[0].strip():
        raise _fail(where, f"{key}.command", "must not be empty")
    patterns = _str_list(where, f"{key}.patterns", table["patterns"], globs=True)
    if not patterns:
        raise _fail(where, f"{key}.patterns", "must not be empty")
    tool = table.get("tool")
    if tool is not None and tool not in tools.NAMES:
        raise _fail(where, f"{key}.tool", f"must be one of {', '.join(tools.NAMES)}")
    if shell and tool not in (None, "generic"):
        raise _fail(where, f"{key}.tool", "a shell command can only be generic (an adapter "
                    "changes the argv, and a shell string has none)")
    if shell and FILES_PLACEHOLDER in command[0]:
        raise _fail(
            where,
            f"{key}.command",
            "{files} is not expanded in a shell string (file names never reach a shell); "
            'use "$@" instead',
        )
    on_busy = table.get("on_busy", "queue")
    if on_busy not in ("queue", "restart"):
        raise _fail(where, f"{key}.on_busy", 'must be "queue" or "restart"')
    return Check(
        name=name,
        command=command,
        patterns=patterns,
        shell=shell,
        debounce_ms=int(
            _number(where, f"{key}.debounce_ms", table.get("debounce_ms", 100), minimum=0,
                    maximum=600_000, integer=True)
        ),
        timeout_s=_number(where, f"{key}.timeout_s", table.get("timeout_s", 300), minimum=0.1,
                          maximum=86_400),
        run_on_start=_bool(where, f"{key}.run_on_start", table.get("run_on_start", True)),
        on_busy=on_busy,
        tool=tool,
    )


def parse(data: Mapping[str, Any], where: str) -> Config:
    known = {"checks", "ignore", "max_parallel", "heartbeat_interval", "metrics_textfile",
             "health_file"}
    for k in data:
        if k not in known:
            raise _fail(where, k, "unknown key")
    checks_table = data.get("checks", {})
    if not isinstance(checks_table, dict):
        raise _fail(where, "checks", "must be a table of tables")
    checks = tuple(_check(where, name, t) for name, t in checks_table.items())
    if not checks:
        raise _fail(where, "checks", "at least one check is needed")
    return Config(
        checks=checks,
        ignore=_str_list(where, "ignore", data.get("ignore", []), globs=True),
        max_parallel=int(
            _number(where, "max_parallel", data.get("max_parallel", 2), minimum=1, maximum=256,
                    integer=True)
        ),
        heartbeat_interval=_number(
            where, "heartbeat_interval", data.get("heartbeat_interval", 30), minimum=1,
            maximum=3600,
        ),
        metrics_textfile=_textfile(where, data.get("metrics_textfile")),
        health_file=_health_file(where, data.get("health_file")),
    )


def _textfile(where: str, value: object) -> Path | None:
    """node_exporter reads only *.prom files, and the daemon's cwd is no place to guess."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.endswith(".prom") or not os.path.isabs(value):
        raise _fail(where, "metrics_textfile", 'must be an absolute path ending in ".prom"')
    return Path(value)


def _health_file(where: str, value: object) -> Path | None:
    """Published outside the private .devloop/, for NRPE/Nagios run as another user."""
    if value is None:
        return None
    if (not isinstance(value, str) or not value.endswith(".json") or not os.path.isabs(value)
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)):
        raise _fail(where, "health_file", 'must be an absolute path ending in ".json"')
    return Path(value)


def load(root: Path, *, follow_symlinks: bool = True) -> Config:
    """The project's config, or the built-in defaults when it has none.

    Never blocks (a FIFO is refused, not read) and never reads more than 1 MiB; a
    reader acting for another user (service install, update-hooks) passes
    follow_symlinks=False.
    """
    path = root / CONFIG_NAME
    try:
        raw = safeio.read_regular(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        return Config(checks=default_checks(root))
    except OSError as exc:
        raise DevloopError(f"{path}: cannot read: {exc.strerror}", EX_CONFIG) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DevloopError(f"{path}: not UTF-8 text", EX_CONFIG) from None
    except tomllib.TOMLDecodeError as exc:
        raise DevloopError(f"{path}: invalid TOML: {exc}", EX_CONFIG) from None
    return parse(data, str(path))


def find_tool(root: Path, name: str) -> str | None:
    """Where `name` would run from in a check: the project's venv first, then PATH."""
    venv = tool_env.project_venv(root)
    path = os.pathsep.join(filter(None, [str(venv / "bin") if venv else None,
                                         os.environ.get("PATH", os.defpath)]))
    return shutil.which(name, path=path)


# Each known tool by name only: checks run with the project's venv first on PATH, so
# devloop.toml never holds a path that only exists on this machine.
OPTIONAL_CHECKS: dict[str, Check] = {
    "ruff": Check(
        name="ruff",
        command=("ruff", "check", FILES_PLACEHOLDER),
        patterns=("*.py", "*.pyi", "pyproject.toml", "ruff.toml", ".ruff.toml"),
    ),
    "mypy": Check(  # what to check and how: devloop/tools/mypy.py
        name="mypy",
        command=("mypy",),
        patterns=("*.py", "*.pyi", "mypy.ini", ".mypy.ini", "pyproject.toml", "setup.cfg"),
    ),
    "pytest": Check(  # only where the project has tests: see default_checks
        name="pytest",
        command=("pytest", "-q"),
        patterns=("*.py",),
        debounce_ms=500,
        timeout_s=600,
    ),
}

SYNTAX_CHECK = Check(
    name="python-syntax",
    command=("python", "-m", "devloop.tools.pysyntax", FILES_PLACEHOLDER),
    patterns=("*.py",),
    debounce_ms=50,
    timeout_s=60,
)


def looks_tested(root: Path) -> bool:
    """A cheap guess at whether pytest would find tests (no process: the daemon's loop
    calls this when a project has no devloop.toml; `devloop init` asks pytest itself)."""
    if any((root / f).is_file() for f in ("pytest.ini", "conftest.py")):
        return True
    try:
        tops = [root, *(d for d in root.iterdir() if d.is_dir() and d.name[0] not in "._")]
    except OSError:
        tops = [root]
    if any((top / "tests").is_dir() or (top / "test").is_dir() for top in tops):
        return True
    return any(root.glob("test_*.py"))


def default_checks(root: Path, *, tested: bool | None = None) -> tuple[Check, ...]:
    """Checks that work with nothing installed, plus the usual tools that are.

    tested: whether pytest finds tests here; None: guess (see looks_tested)."""
    checks = [SYNTAX_CHECK]
    for tool, check in OPTIONAL_CHECKS.items():
        if tool == "pytest" and not (looks_tested(root) if tested is None else tested):
            continue  # pytest exits 5 (a failure) when it collects nothing
        if find_tool(root, tool) is not None:
            checks.append(check)
    return tuple(checks)
