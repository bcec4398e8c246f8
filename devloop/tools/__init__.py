"""Tool adapters: how to run a known tool well and how to read its report.

Shaped like pre-commit's `languages/`: one small module per known tool
(`pytest.py`, `ruff.py`, `pysyntax.py`, and `mypy.py` with its dmypy server),
plus `generic.py` for every other command. The scheduler and the runner know
nothing about any tool: the runner asks `adapter_for(check)` once per run, lets
the adapter `prepare()` the argv and environment, runs the command with stdout
and stderr captured apart, and hands both (and a private report directory) to
the adapter's `parse()`, which returns findings, optional counts and a reason.

How a check is matched to its adapter:
1. `tool = "NAME"` in the check's table of devloop.toml (validated against
   `NAMES`; `tool = "generic"` turns every adapter off for that check);
2. otherwise by the command: the executable's base name (`.venv/bin/pytest`,
   `ruff`, ...) or `python -m MODULE` (`python3 -m pytest`), as each adapter's
   `executables` and `modules` list them;
3. otherwise, and always for `shell = true` commands, the generic adapter.

To add an adapter: write `devloop/tools/NAME.py` defining `ADAPTER`, an
instance of an `Adapter` subclass, and add NAME to `NAMES` below.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from devloop.findings import MAX_FINDINGS, Finding, relative

if TYPE_CHECKING:  # config imports NAMES from here: no import cycle at run time
    from devloop.config import Check
    from devloop.store import Outcome

# The keys `tool = ...` accepts, each the module devloop/tools/<name>.py.
NAMES: tuple[str, ...] = ("generic", "mypy", "pysyntax", "pytest", "ruff")


@dataclass
class Invocation:
    """One run about to start; `Adapter.prepare` may change `argv` and `env` in place."""

    argv: list[str]
    env: dict[str, str]
    root: Path
    files: tuple[str, ...]
    whole: bool  # the whole project, not just the files that changed
    # private to this run (0700, empty), removed after parse(); made only for an adapter
    # that `wants_report_dir` (a directory costs syscalls between a change and its run)
    report_dir: Path | None
    cache_dir: Path  # the project's tool caches (.devloop/cache or CacheDirectory=)

    def report_file(self, name: str) -> Path:
        """`name` in the run's report directory (see `Adapter.wants_report_dir`)."""
        if self.report_dir is None:
            raise RuntimeError("this adapter has no report directory: set wants_report_dir")
        return self.report_dir / name


@dataclass(frozen=True)
class Stream:
    """What a stream said: all of it when `complete`, else its head and tail only."""

    text: str
    size: int  # bytes written in total
    complete: bool


@dataclass(frozen=True)
class Finished:
    stdout: Stream
    stderr: Stream
    exit_code: int


@dataclass(frozen=True)
class Report:
    """What an adapter read from a run.

    counts: {"passed", "failed", "errors", "skipped"} for test runners, else None.
    reason: one short line (or a few) saying why it failed, or what it ran.
    outcome: set only to overrule the exit code's verdict (e.g. pytest's exit 5,
    "no tests collected", when a test selection picked none: a pass).
    """

    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] | None = None
    reason: str | None = None
    outcome: Outcome | None = None


class Adapter:
    """Base adapter: runs the command as written and reads nothing (see generic.py)."""

    name: ClassVar[str] = "generic"
    executables: ClassVar[tuple[str, ...]] = ()  # base names of argv[0]
    modules: ClassVar[tuple[str, ...]] = ()  # `python -m MODULE`
    # It checks the whole program whatever changed (mypy): one run, never split, and its
    # findings replace all the check's earlier ones.
    whole_program: ClassVar[bool] = False
    wants_report_dir: ClassVar[bool] = False  # it points the tool's report at a file there

    def matches(self, argv: tuple[str, ...]) -> bool:
        if not argv:
            return False
        if os.path.basename(argv[0]) in self.executables:
            return True
        return (len(argv) >= 3 and _is_python(argv[0]) and argv[1] == "-m"
                and argv[2] in self.modules)

    async def prepare(self, inv: Invocation) -> None:
        """Change `inv.argv` / `inv.env` before the run (e.g. point a report at report_dir)."""

    def parse(self, inv: Invocation, done: Finished) -> Report:
        raise NotImplementedError


def _is_python(exe: str) -> bool:
    base = os.path.basename(exe)
    return base == "python" or (base.startswith("python3") and
                                all(c.isdigit() or c == "." for c in base[7:]))


def load(name: str) -> Adapter:
    """The adapter called `name` (one of NAMES)."""
    module = importlib.import_module(f"devloop.tools.{name}")
    adapter = module.ADAPTER
    assert isinstance(adapter, Adapter)
    return adapter


def adapter_for(check: Check) -> Adapter:
    """The check's adapter: its `tool` key, else its command, else generic."""
    if check.tool is not None:
        return load(check.tool)
    if not check.shell:
        for name in NAMES:
            if name != "generic":
                adapter = load(name)
                if adapter.matches(check.command):
                    return adapter
    return load("generic")


def merge(reports: list[Report]) -> Report:
    """Several runs of one check (its files split below ARG_MAX) as one report."""
    if len(reports) == 1:
        return reports[0]
    counts: dict[str, int] | None = None
    for r in reports:
        if r.counts is not None:
            counts = counts or {}
            for k, v in r.counts.items():
                counts[k] = counts.get(k, 0) + v
    reasons = list(dict.fromkeys(r.reason for r in reports if r.reason))
    return Report(
        findings=[f for r in reports for f in r.findings][:MAX_FINDINGS],
        counts=counts,
        reason="\n".join(reasons) or None,
    )


def first_lines(text: str, n: int = 3, width: int = 200) -> str:
    """The first `n` non-blank lines, each cut to `width`: a reason is short."""
    lines = [ln.rstrip()[:width] for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[:n])


__all__ = ["NAMES", "Adapter", "Finished", "Invocation", "Report", "Stream", "adapter_for",
           "first_lines", "load", "merge", "relative"]
