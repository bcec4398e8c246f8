"""pytest: results from its own JUnit XML report, not from its text.

The adapter adds `--junitxml=REPORT_DIR/junit.xml` (the `xunit1` flavour, which
keeps each test's file and line), `--continue-on-collection-errors` (one
broken test module does not hide every other result) and `-p
devloop_tool_state` (pytest_plugin/: hypothesis and pytest-benchmark keep their
state in the cache, not the project). Each failing or erroring test is one
finding: its node id and the first lines of its message, at the file and line
where it failed; a collection error is a finding where the real error is (the
SyntaxError in the imported module). Warnings are never findings. The counts
(passed, failed, errors, skipped) go into the run's `counts`.

With pytest-testmon installed in the project's venv, a run after a change
selects only the tests the change can affect (`--testmon`; tests that failed
last time always run again); the start-up run runs everything (and records).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from devloop import findings
from devloop.findings import Finding
from devloop.store import Outcome
from devloop.tools import Finished, Invocation, Report, env, first_lines, generic, relative

REPORT_NAME = "junit.xml"
MAX_REPORT_BYTES = 256 * 1024 * 1024
PLUGIN_DIR = Path(__file__).with_name("pytest_plugin")
PLUGIN = "devloop_tool_state"
MESSAGE_LINES = 4
NO_TESTS = 5  # pytest's exit code when it collected nothing
COLLECT_TIMEOUT_S = 120

_LOCATION = re.compile(r"^(?P<path>[^\s:][^:\n]*):(?P<line>\d+): ", re.MULTILINE)
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning|Exit|Interrupt): ")
_SYNTAX_AT = re.compile(r'^E\s+File "(?P<path>[^"\n]+)", line (?P<line>\d+)', re.MULTILINE)


def has_testmon(root: Path) -> bool:
    """pytest-testmon is installed in the project's venv."""
    venv = env.project_venv(root)
    return venv is not None and any(venv.glob("lib/python3*/site-packages/testmon/"))


class Pytest(generic.Generic):
    name = "pytest"
    executables = ("pytest", "py.test")
    modules = ("pytest",)
    wants_report_dir = True

    async def prepare(self, inv: Invocation) -> None:
        extra = [f"--junitxml={inv.report_file(REPORT_NAME)}", "-o", "junit_family=xunit1",
                 "-o", "junit_logging=no", "--continue-on-collection-errors", "-p", PLUGIN]
        # testmon needs pytest's cache plugin (it fails on `-p no:cacheprovider`)
        off = "--no-testmon" in inv.argv or any("no:cacheprovider" in a for a in inv.argv)
        if has_testmon(inv.root) and not off:
            datafile = Path(inv.env["TESTMON_DATAFILE"])
            datafile.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            extra.append("--testmon-noselect" if inv.whole else "--testmon")
        inv.argv.extend(extra)
        _use_plugin(inv.env, inv.cache_dir)

    def parse(self, inv: Invocation, done: Finished) -> Report:
        path = inv.report_file(REPORT_NAME)
        selecting = "--testmon" in inv.argv
        if not path.exists():  # usage error, a broken conftest.py, a crash
            report = super().parse(inv, done)
            why = (first_lines(done.stderr.text, 2) or generic.failure_reason(done)
                   or f"pytest exited {done.exit_code}")
            return Report(findings=report.findings, reason=why,
                          outcome="fail" if done.exit_code in (1, 2) else "error")
        try:
            if path.stat().st_size > MAX_REPORT_BYTES:
                raise ValueError(f"over {MAX_REPORT_BYTES >> 20} MiB")
            found, counts = read_junit(inv.root, path)
        except (OSError, ValueError, ET.ParseError) as exc:
            return Report(reason=f"pytest's JUnit report could not be read: {exc}",
                          outcome="error")
        reason = summary(counts)
        if selecting:
            reason = f"testmon: only the tests the change can affect ran ({reason or 'none'})"
        outcome: Outcome | None = None
        if done.exit_code == NO_TESTS:
            if selecting:
                outcome = "pass"  # nothing the change can affect
            else:
                reason = "pytest collected no tests"
        elif done.exit_code not in (0, 1) and not found:  # interrupted, internal error
            reason = generic.failure_reason(done) or f"pytest exited {done.exit_code}"
            outcome = None if done.exit_code == 2 else "error"
        return Report(findings=found[:findings.MAX_FINDINGS], counts=counts,
                      reason=reason or None, outcome=outcome)


def _use_plugin(environ: dict[str, str], cache: Path) -> None:
    """Make `-p devloop_tool_state` importable, and tell it where the cache is."""
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_DIR),
                                                          environ.get("PYTHONPATH")]))
    environ["DEVLOOP_CACHE_DIR"] = str(cache)


def summary(counts: dict[str, int]) -> str:
    """As pytest says it: `3 failed, 1 passed, 1 skipped, 2 errors`."""
    said = [f"{counts[k]} {k}" for k in ("failed", "passed", "skipped") if counts[k]]
    if counts["errors"]:
        said.append(f"{counts['errors']} error{'s' if counts['errors'] > 1 else ''}")
    return ", ".join(said)


def read_junit(root: Path, path: Path) -> tuple[list[Finding], dict[str, int]]:
    """Findings and counts from a JUnit XML report (xunit1: testcases carry file/line)."""
    found: list[Finding] = []
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for _, elem in ET.iterparse(path, events=("end",)):
        if elem.tag != "testcase":
            continue
        kinds = {child.tag: child for child in elem}
        problem = kinds.get("failure")
        if problem is not None:
            counts["failed"] += 1
        elif (problem := kinds.get("error")) is not None:
            counts["errors"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
        if problem is not None and len(found) < findings.MAX_FINDINGS:
            found.append(_finding(root, elem, problem))
        elem.clear()
    return found, counts


def node_id(elem: ET.Element) -> str:
    """`tests/test_x.py::TestK::test_y[param]` back from xunit1's classname and name."""
    file, classname, name = elem.get("file", ""), elem.get("classname", ""), elem.get("name", "")
    if not classname:  # a collection error: name is the module's dotted path
        return file or name
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    inner = classname[len(module) + 1:] if module and classname.startswith(module + ".") else ""
    return "::".join(filter(None, [file or classname, *inner.split("."), name]))


def _in_project(root: Path, path: str) -> str | None:
    rel = relative(root, path)
    if rel is None or rel.split(os.sep)[0] in env.VENVS or "site-packages" in rel:
        return None
    return rel


def _finding(root: Path, elem: ET.Element, problem: ET.Element) -> Finding:
    text = problem.text or ""
    nid = node_id(elem)
    message = problem.get("message", "")
    where: tuple[str, int] | None = None
    m = _SYNTAX_AT.search(text)  # a SyntaxError in a module being imported
    if m is not None and (rel := _in_project(root, m["path"])) is not None:
        where = (rel, int(m["line"]))
    if where is None:  # the innermost frame inside the project
        for loc in reversed(list(_LOCATION.finditer(text))):
            if (rel := _in_project(root, loc["path"])) is not None:
                where = (rel, int(loc["line"]))
                break
    if where is None:
        file = _in_project(root, elem.get("file", "")) or elem.get("file", "") or nid
        where = (file, int(elem.get("line", "0") or 0) + 1)  # xunit1's line is 0-based
    if elem.get("classname") == "" or message == "collection failure":
        errors = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
        # from the exception's own line (`SyntaxError: ...`, `pkg.SomeWarning: ...`) on
        first = next((i for i, ln in enumerate(errors) if _EXCEPTION.match(ln)), None)
        if first is not None:
            message = "\n".join(errors[first:])
        elif errors:
            message = errors[-1]
        kind = "collection error"
    else:
        kind = "error" if problem.tag == "error" else "failed"
    # one line: a finding is printed as one (`|` marks where pytest's lines broke)
    body = " | ".join(ln.strip() for ln in first_lines(message, MESSAGE_LINES).splitlines())
    body = body or kind
    return Finding(file=where[0], line=where[1], column=None, severity="error", code=kind,
                   message=f"{nid}: {body}")


ADAPTER = Pytest()


def collects_tests(root: Path, environ: dict[str, str], cache: Path,
                   ) -> tuple[bool, str | None]:
    """Ask the project's pytest (`--collect-only -q`) whether it finds tests: (found, note).

    For `devloop init`: the tests are wherever pytest finds them (`toolz/tests/`, a
    `testpaths` setting...), and when pytest is left out the note says why."""
    if shutil.which("pytest", path=environ.get("PATH")) is None:
        return False, "pytest is not installed in the project's venv or on PATH"
    argv = ["pytest", "--collect-only", "-q", "-p", PLUGIN]
    _use_plugin(environ, cache)
    try:
        r = subprocess.run(argv, cwd=root, env=environ, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace",
                           timeout=COLLECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return True, f"pytest --collect-only took over {COLLECT_TIMEOUT_S}s: added anyway"
    if r.returncode == NO_TESTS:
        return False, "pytest collected no tests"
    if r.returncode in (0, 1, 2):  # 1, 2: tests, some of which do not even import
        return True, None if r.returncode == 0 else "some test modules fail to import"
    why = first_lines(r.stderr, 2) or first_lines(r.stdout, 2)
    return False, f"pytest --collect-only exited {r.returncode}: {why}"
