"""`devloop init DIR`: write devloop.toml from the tools found; keep .devloop/ out of git."""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path

from devloop import config, statedir
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.errors import EX_CANTCREAT, EX_OK, DevloopError
from devloop.tools import env as tool_env
from devloop.tools import pytest as pytest_tool

GITIGNORE_LINE = ".devloop/"


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="write devloop.toml with the checks found for this project",
        description="Write DIR/devloop.toml with the built-in checks (a Python syntax check) "
        "and ruff, mypy and pytest when they are in DIR/.venv (or DIR/venv) or on PATH; "
        "pytest only when `pytest --collect-only` finds tests (else it says why). Commands "
        "name tools, never a path of this machine: checks run with the project's venv first "
        "on PATH. Adds .devloop/ to DIR/.gitignore. An existing devloop.toml is never "
        "overwritten (exit 73).",
    )
    add_dir_argument(p)
    p.set_defaults(func=run)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render(checks: tuple[config.Check, ...]) -> str:
    lines = [
        "# DevLoop checks: see README.md for every key",
        "# ignore = []            # extra gitignore-style patterns",
        "# max_parallel = 2       # checks running at once",
        "# heartbeat_interval = 30",
        "",
    ]
    for c in checks:
        lines.append(f"[checks.{_toml_str(c.name)}]")
        lines.append(f"command = [{', '.join(_toml_str(a) for a in c.command)}]")
        lines.append(f"patterns = [{', '.join(_toml_str(p) for p in c.patterns)}]")
        lines.append(f"debounce_ms = {c.debounce_ms}")
        lines.append(f"timeout_s = {c.timeout_s:g}")
        lines.append(f"run_on_start = {'true' if c.run_on_start else 'false'}")
        lines.append(f'on_busy = "{c.on_busy}"')
        lines.append("")
    return "\n".join(lines)


def _ensure_gitignored(root: Path) -> bool:
    path = root / ".gitignore"
    # bytes that are not UTF-8 are kept as they are (surrogateescape), never rewritten
    text = path.read_text(encoding="utf-8", errors="surrogateescape") if path.exists() else ""
    if any(line.strip() in (GITIGNORE_LINE, ".devloop", "/.devloop", "/.devloop/")
           for line in text.splitlines()):
        return False
    sep = "" if not text or text.endswith("\n") else "\n"
    with path.open("a", encoding="utf-8", errors="surrogateescape") as f:
        f.write(f"{sep}{GITIGNORE_LINE}\n")
    return True


def _pytest_verdict(root: Path) -> tuple[bool, str | None]:
    """Whether the project's pytest finds tests, asked in the environment checks get."""
    statedir.ensure(root)  # the cache inside it is where pytest's own state goes
    try:
        cache = tool_env.cache_dir(root, os.environ)
    except OSError as exc:
        raise DevloopError(f"cannot use the tool cache directory: {exc}", EX_CANTCREAT) from None
    return pytest_tool.collects_tests(root, tool_env.environment(root, os.environ, cache), cache)


def run(args: argparse.Namespace) -> int:
    root = project_root(args.dir)
    target = root / config.CONFIG_NAME
    if target.exists():
        raise DevloopError(f"{target} already exists: not overwriting it", EX_CANTCREAT)
    tested, note = _pytest_verdict(root)
    checks = config.default_checks(root, tested=tested)
    text = render(checks)
    config.parse(tomllib.loads(text), str(target))  # what we write must load
    try:
        with target.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise DevloopError(f"{target} already exists: not overwriting it", EX_CANTCREAT) from None
    except OSError as exc:
        raise DevloopError(f"cannot write {target}: {exc.strerror}", EX_CANTCREAT) from None
    print(f"wrote {target}: {', '.join(c.name for c in checks)}")
    if note is not None:
        print(f"{'pytest' if tested else 'no pytest check'}: {note}")
    if _ensure_gitignored(root):
        print(f"added {GITIGNORE_LINE} to {root / '.gitignore'}")
    return EX_OK
