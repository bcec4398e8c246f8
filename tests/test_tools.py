"""Tool adapters on real projects with real tools: streams, ruff, pytest, the venv, caches."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from daemon_proc import devloop
from tool_projects import attach_venv, check, make_venv, run_check, tool_state_in

from devloop import tools
from devloop.tools import pytest as pytest_adapter


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real venv per session: pytest, hypothesis, ruff, mypy, pytest-testmon,
    pytest-benchmark."""
    return make_venv(tmp_path_factory.mktemp("venv") / "venv")


@pytest.fixture
def proj(project: Path, venv: Path) -> Path:
    attach_venv(project, venv)
    (project / "conftest.py").write_text("")  # the rootdir on sys.path, as many projects do
    return project


# -- matching -------------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "name"), [
    ('command = ["ruff", "check", "{files}"]', "ruff"),
    ('command = [".venv/bin/ruff", "check", "{files}"]', "ruff"),
    ('command = ["python3", "-m", "pytest", "-q"]', "pytest"),
    ('command = ["py.test"]', "pytest"),
    ('command = ["/usr/bin/python3", "-m", "devloop.pysyntax", "{files}"]', "pysyntax"),
    ('command = ["python", "-m", "devloop.tools.pysyntax", "{files}"]', "pysyntax"),
    ('command = ["pytest-watch"]', "generic"),
    ('command = "pytest -q"\nshell = true', "generic"),
    ('command = ["./lint"]\ntool = "ruff"', "ruff"),
    ('command = ["ruff", "check"]\ntool = "generic"', "generic"),
])
def test_a_check_finds_its_adapter(table: str, name: str) -> None:
    chk = check(f'{table}\npatterns = ["*.py"]\n')
    assert tools.adapter_for(chk).name == name


# -- item 4: clean streams --------------------------------------------------------------------
def test_ruff_warning_on_stderr_loses_no_finding(proj: Path) -> None:
    (proj / "ruff.toml").write_text('select = ["F"]\n')  # deprecated: a warning on stderr
    (proj / "a.py").write_text("import os\n")
    run, found = run_check(proj, check('command = ["ruff", "check", "{files}"]\n'
                                       'patterns = ["*.py"]\n'))
    assert "deprecated" in run.output  # the warning is kept
    assert run.outcome == "fail"
    assert [(f.file, f.line, f.code) for f in found] == [("a.py", 1, "F401")]
    assert tool_state_in(proj) == []  # no .ruff_cache


def test_ruff_json_on_stdout_with_text_around_it(proj: Path) -> None:
    """A wrapper that prints text before and after ruff's JSON on stdout."""
    (proj / "a.py").write_text("import os\nimport sys\n")
    lint = proj / "lint"
    lint.write_text('#!/bin/sh\necho "linting..."\n'
                    'ruff check --output-format=json "$@"\necho "[done] bye"\n')
    lint.chmod(0o755)
    _, found = run_check(proj, check('command = ["./lint", "{files}"]\ntool = "ruff"\n'
                                     'patterns = ["*.py"]\n'))
    assert sorted((f.line, f.code) for f in found) == [(1, "F401"), (2, "F401")]


def test_ruff_configuration_error_is_an_error_with_its_reason(proj: Path) -> None:
    (proj / "ruff.toml").write_text("[lint\n")
    (proj / "a.py").write_text("x = 1\n")
    run, found = run_check(proj, check('command = ["ruff", "check", "{files}"]\n'
                                       'patterns = ["*.py"]\n'))
    assert run.outcome == "error" and found == []
    assert run.reason is not None and "ruff failed" in run.reason


def test_huge_output_says_what_was_not_parsed(project: Path) -> None:
    (project / "a.py").write_text("x = 1\n")
    script = ("import sys\nprint('a.py:1: error: first')\n"
              "sys.stdout.write('noise\\n' * 400_000)\nprint('a.py:1: error: last')\n"
              "sys.stderr.write('a.py:1: warning: on stderr\\n'); sys.exit(1)\n")
    run, found = run_check(project, check(
        f'command = [{json.dumps(sys.executable)}, "-c", {json.dumps(script)}]\n'
        'patterns = ["*.py"]\n'))
    assert {f.message for f in found} == {"first", "last", "on stderr"}
    assert run.reason is not None and "middle of stdout" in run.reason
    assert "not parsed" in run.reason


# -- item 3 of issue 11: pytest's own report ---------------------------------------------------
TESTS = '''\
import warnings
import pytest
from pkg.mod import f

def test_ok():
    warnings.warn("old", DeprecationWarning)
    assert f()

@pytest.mark.parametrize("x", [1, 2])
def test_eq(x):
    assert f() == [1, 3]

class TestK:
    def test_m(self):
        raise ValueError("boom")

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_fixture(broken):
    pass

@pytest.mark.skip(reason="no")
def test_skip():
    pass
'''


def pytest_project(root: Path) -> None:
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("def f():\n    return [1, 2]\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_a.py").write_text(TESTS)


PYTEST = check('command = ["pytest", "-q"]\npatterns = ["*.py"]\n', "pytest")


def test_pytest_failures_are_node_ids_with_assertions_and_counts(proj: Path) -> None:
    pytest_project(proj)
    (proj / "tests" / "test_b.py").write_text("import pkg.bad\n")
    (proj / "pkg" / "bad.py").write_text("x = 1\ndef g(:\n    pass\n")
    run, found = run_check(proj, PYTEST)
    assert run.outcome == "fail"
    assert run.counts == {"passed": 1, "failed": 3, "errors": 2, "skipped": 1}
    by_id = {f.message.split(": ", 1)[0]: f for f in found}
    assert set(by_id) == {"tests/test_a.py::test_eq[1]", "tests/test_a.py::test_eq[2]",
                          "tests/test_a.py::TestK::test_m", "tests/test_a.py::test_fixture",
                          "tests/test_b.py"}
    eq = by_id["tests/test_a.py::test_eq[1]"]
    assert (eq.file, eq.line) == ("tests/test_a.py", 11)
    assert eq.message.startswith("tests/test_a.py::test_eq[1]: assert [1, 2] == [1, 3] | ")
    assert all("\n" not in f.message for f in found)  # a finding is one line
    assert by_id["tests/test_a.py::TestK::test_m"].message.endswith("ValueError: boom")
    syntax = by_id["tests/test_b.py"]  # at the real error, not in pytest's import machinery
    assert (syntax.file, syntax.line, syntax.code) == ("pkg/bad.py", 2, "collection error")
    assert syntax.message.startswith("tests/test_b.py: SyntaxError: ")
    assert not any("DeprecationWarning" in f.message for f in found)
    assert run.reason == "3 failed, 1 passed, 1 skipped, 2 errors"  # as pytest says it
    assert tool_state_in(proj) == []


def test_pytest_warnings_never_fail_a_passing_run(proj: Path) -> None:
    (proj / "tests").mkdir()
    (proj / "tests" / "test_w.py").write_text(
        "import warnings\n\ndef test_w():\n    warnings.warn('old', DeprecationWarning)\n")
    run, found = run_check(proj, PYTEST)
    assert (run.outcome, found, run.counts) == (
        "pass", [], {"passed": 1, "failed": 0, "errors": 0, "skipped": 0})


def test_pytest_usage_error_is_an_error_with_a_reason(proj: Path) -> None:
    (proj / "tests").mkdir()
    (proj / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    run, _ = run_check(proj, check('command = ["pytest", "--no-such-option"]\n'
                                   'patterns = ["*.py"]\n'))
    assert run.outcome == "error"
    assert run.reason is not None and "--no-such-option" in run.reason


def test_node_id_from_xunit1() -> None:
    import xml.etree.ElementTree as ET

    case = ET.fromstring('<testcase classname="a.b.test_x.TestA.TestB" name="test_y[1-x]" '
                         'file="a.b/test_x.py" line="3"/>')
    assert pytest_adapter.node_id(case) == "a.b/test_x.py::TestA::TestB::test_y[1-x]"


# -- issue 12 item 2: the project's environment -------------------------------------------------
def test_checks_get_the_projects_venv(proj: Path) -> None:
    (proj / "a.py").write_text("")
    script = 'echo "VENV=$VIRTUAL_ENV"; command -v python; command -v mypy'
    run, _ = run_check(proj, check(f"command = {json.dumps(script)}\nshell = true\n"
                                   'patterns = ["*.py"]\n'))
    lines = run.output.splitlines()
    assert lines[0] == f"VENV={proj / '.venv'}"
    assert lines[1] == str(proj / ".venv" / "bin" / "python")
    assert lines[2] == str(proj / ".venv" / "bin" / "mypy")


def test_init_writes_no_machine_path_and_finds_package_tests(proj: Path) -> None:
    (proj / "toolz" / "tests").mkdir(parents=True)  # tests inside the package, as toolz does
    (proj / "toolz" / "__init__.py").write_text("")
    (proj / "toolz" / "tests" / "__init__.py").write_text("")
    (proj / "toolz" / "tests" / "test_it.py").write_text("def test_it():\n    pass\n")
    r = devloop("init", str(proj))
    assert r.returncode == 0, r.stderr
    text = (proj / "devloop.toml").read_text()
    assert str(proj) not in text and sys.executable not in text and '"/' not in text
    data = tomllib.loads(text)["checks"]
    assert {"python-syntax", "ruff", "mypy", "pytest"} <= set(data)
    assert data["pytest"]["command"][0] == "pytest"
    # and the written config runs, here and in a copy of the project elsewhere
    r = devloop("run", str(proj))
    assert "python-syntax: pass" in r.stderr and "pytest: pass" in r.stderr, r.stderr
    assert tool_state_in(proj) == []


def test_init_says_why_pytest_was_left_out(proj: Path) -> None:
    (proj / "tests").mkdir()
    (proj / "tests" / "helpers.py").write_text("X = 1\n")  # a tests dir without tests
    r = devloop("init", str(proj))
    assert r.returncode == 0, r.stderr
    assert "pytest" not in tomllib.loads((proj / "devloop.toml").read_text())["checks"]
    assert "no pytest check: pytest collected no tests" in r.stdout


def test_testmon_runs_only_the_affected_tests(proj: Path) -> None:
    (proj / "a.py").write_text("def a():\n    return 1\n")
    (proj / "b.py").write_text("def b():\n    return 2\n")
    (proj / "tests").mkdir()
    (proj / "tests" / "test_a.py").write_text("from a import a\n\ndef test_a():\n"
                                              "    assert a() == 1\n")
    (proj / "tests" / "test_b.py").write_text("from b import b\n\ndef test_b():\n"
                                              "    assert b() == 2\n")
    first, _ = run_check(proj, PYTEST)  # start-up: everything runs, testmon records
    assert first.outcome == "pass" and first.counts is not None
    assert first.counts["passed"] == 2
    (proj / "b.py").write_text("def b():\n    return 3\n")
    run, found = run_check(proj, PYTEST, ["b.py"])
    assert run.outcome == "fail" and run.counts is not None
    assert run.counts["passed"] + run.counts["failed"] == 1  # test_a was not affected
    assert [f.message.split(":")[0] for f in found] == ["tests/test_b.py"]
    assert run.reason is not None and run.reason.startswith("testmon: only the tests")
    assert tool_state_in(proj) == []  # .testmondata went to the cache


def test_without_testmon_the_whole_suite_runs(project: Path) -> None:
    (project / "tests").mkdir()
    (project / "tests" / "test_a.py").write_text("def test_a():\n    pass\n")
    (project / "tests" / "test_b.py").write_text("def test_b():\n    pass\n")
    run, _ = run_check(project, PYTEST, ["tests/test_a.py"])
    assert run.counts is not None and run.counts["passed"] == 2
    assert run.reason == "2 passed"


# -- issue 12 item 3: no tool state in the project ----------------------------------------------
HYPOTHESIS_TESTS = '''\
from hypothesis import given, strategies as st

from pkg.mod import double


@given(st.integers())
def test_double(n):
    assert double(n) == n + n


@given(st.integers())
def test_fails(n):
    assert double(n) < 100
'''


def hypothesis_project(root: Path) -> None:
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("def double(n: int) -> int:\n    return n * 2\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_h.py").write_text(HYPOTHESIS_TESTS)
    (root / "tests" / "test_bench.py").write_text(  # pytest-benchmark: .benchmarks/
        "from pkg.mod import double\n\n\ndef test_speed(benchmark):\n"
        "    benchmark(double, 2)\n")
    (root / "ruff.toml").write_text('[lint]\nselect = ["F", "E"]\n')  # not an ancestor's


def writing_bytecode() -> dict[str, str]:
    """Our environment as a person's shell has it: Python writes bytecode, and no `CI`
    (under CI=true hypothesis takes its "ci" profile, which keeps no example database)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "CI")}


def test_default_checks_leave_no_tool_state_in_the_project(proj: Path) -> None:
    hypothesis_project(proj)
    # no devloop.toml: the defaults, all four tools
    r = subprocess.run([sys.executable, "-m", "devloop", "run", str(proj)], capture_output=True,
                       text=True, timeout=600, env=writing_bytecode())
    for name in ("python-syntax: pass", "ruff: pass", "mypy: pass", "pytest: fail"):
        assert name in r.stderr, r.stdout + r.stderr
    assert "tests/test_h.py::test_fails" in r.stdout
    assert tool_state_in(proj) == []
    cache = proj / ".devloop" / "cache"
    assert (cache / "hypothesis" / "examples").is_dir()  # the failing example is kept there
    assert (cache / "pycache").is_dir() and (cache / "mypy").is_dir()
    assert (cache / "benchmarks").is_dir()
    assert list((cache / "runs").iterdir()) == []  # every run's report dir is removed


def test_hypothesis_without_its_storage_variable_uses_the_plugin(proj: Path) -> None:
    """hypothesis before HYPOTHESIS_STORAGE_DIRECTORY existed: told by the pytest plugin."""
    hypothesis_project(proj)
    run, found = run_check(proj, PYTEST, environ={**writing_bytecode(),
                                                  "HYPOTHESIS_STORAGE_DIRECTORY": ""})
    assert run.outcome == "fail" and len(found) == 1, run.output
    assert tool_state_in(proj) == []
    assert (proj / ".devloop" / "cache" / "hypothesis" / "examples").is_dir()


def test_the_units_cache_variables_are_honoured(proj: Path, tmp_path: Path) -> None:
    """Under the unit: CACHE_DIRECTORY (CacheDirectory=) and the unit's own variables."""
    hypothesis_project(proj)
    unit_cache = tmp_path / "var-cache-devloop-proj"
    unit_cache.mkdir()
    environ = {**writing_bytecode(), "CACHE_DIRECTORY": str(unit_cache),
               "RUFF_CACHE_DIR": str(unit_cache / "ruff-from-unit"),
               "PYTEST_ADDOPTS": f"-o cache_dir={unit_cache / 'pytest-from-unit'}"}
    run_check(proj, PYTEST, environ=environ)
    run_check(proj, check('command = ["ruff", "check", "{files}"]\npatterns = ["*.py"]\n'),
              environ=environ)
    assert tool_state_in(proj) == []
    assert not (proj / ".devloop" / "cache").exists()
    made = {p.name for p in unit_cache.iterdir()}
    assert {"ruff-from-unit", "pytest-from-unit", "hypothesis", "pycache"} <= made


# -- issue 12 item 5a: file lists longer than ARG_MAX -------------------------------------------
def test_forty_thousand_files_are_split_below_arg_max_and_merged(project: Path,
                                                                  tmp_path: Path) -> None:
    names = [f"d{i % 100:02d}/a_module_name_long_enough_to_need_several_runs_{i:05d}.py"
             for i in range(40_000)]
    assert sum(len(n) + 1 for n in names) > os.sysconf("SC_ARG_MAX")
    for i in range(100):
        (project / f"d{i:02d}").mkdir()
    for n in names:
        (project / n).write_text("x = 1\n")
    (project / names[-1]).write_text("def (:\n")  # in the last batch
    (project / names[0]).write_text("def (:\n")  # in the first
    log = tmp_path / "batches"
    (project / "devloop.toml").write_text(
        "[checks.syntax]\n"
        'command = ["python", "-m", "devloop.tools.pysyntax", "{files}"]\n'
        'patterns = ["*.py"]\n'
        "[checks.count]\n"
        f'command = "echo $# >> {log}"\nshell = true\npatterns = ["*.py"]\n')
    r = devloop("run", str(project))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "count: pass" in r.stderr
    batches = [int(n) for n in log.read_text().split()]
    assert len(batches) > 1 and sum(batches) == 40_000
    assert f"{names[0]}:1:" in r.stdout and f"{names[-1]}:1:" in r.stdout  # both batches' findings
    assert "argument list too long" not in r.stdout


def test_only_adapters_that_read_a_report_file_get_a_report_directory(proj: Path) -> None:
    """Making a directory is syscalls between a save and its run: a generic check gets
    none; ruff writes its report in a private one, removed after the run."""
    (proj / "a.py").write_text("import os\n")
    runs = proj / ".devloop" / "cache" / "runs"
    run, _ = run_check(proj, check('command = ["true", "{files}"]\npatterns = ["*.py"]\n'))
    assert run.outcome == "pass" and not runs.exists()
    run, found = run_check(proj, check('command = ["ruff", "check", "{files}"]\n'
                                       'patterns = ["*.py"]\n'))
    assert [f.code for f in found] == ["F401"], run.output
    assert runs.is_dir() and list(runs.iterdir()) == []


def test_a_planted_cache_symlink_is_refused(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / ".devloop").mkdir(mode=0o700)
    (project / ".devloop" / "cache").symlink_to(elsewhere)
    (project / "a.py").write_text("x = 1\n")
    run, _ = run_check(project, check('command = ["python", "-m", "devloop.tools.pysyntax", '
                                      '"{files}"]\npatterns = ["*.py"]\n'))
    assert run.outcome == "pass"  # with a temporary cache, not through the symlink
    assert list(elsewhere.iterdir()) == []


def test_syntax_check_runs_with_the_projects_python_whatever_path_the_config_names(
        proj: Path) -> None:
    """An old devloop.toml names a python of another machine: it runs all the same, with
    the project's interpreter (here: its venv's), and DevLoop's script by its path."""
    (proj / "ok.py").write_text("x = 1\n")
    (proj / "bad.py").write_text("x = (\n")
    old = check('command = ["/home/someone-else/.devloop/bin/python3", "-m", '
                '"devloop.pysyntax", "{files}"]\npatterns = ["*.py"]\n')
    run, found = run_check(proj, old)
    assert run.outcome == "fail", run.output
    assert [(f.file, f.line) for f in found] == [("bad.py", 1)]
    assert tool_state_in(proj) == []
    chk = check('command = ["sh", "-c", "true"]\ntool = "pysyntax"\npatterns = ["*.py"]\n')
    inv = tools.Invocation(argv=["sh", "-c", "true"], env={}, root=proj, files=("ok.py",),
                           whole=False, report_dir=proj, cache_dir=proj)
    asyncio.run(tools.adapter_for(chk).prepare(inv))
    assert inv.argv[0] == str(proj / ".venv" / "bin" / "python")
    assert inv.argv[1:3] == ["-I", "-B"] and inv.argv[-1] == "ok.py"


@pytest.mark.parametrize("command", [
    '["pytest", "-q", "-p", "no:cacheprovider"]',  # the pytest adapter
    '["env", "PYTHONDONTWRITEBYTECODE=1", "pytest", "-p", "no:cacheprovider"]',  # generic
])
def test_cache_options_never_break_a_strict_project(proj: Path, command: str) -> None:
    """click's setup.cfg has `filterwarnings = error`; with the cache plugin off, pytest
    calls `-o cache_dir=` an unknown option: that warning must not fail the run."""
    (proj / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    (proj / "tests").mkdir()
    (proj / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    run, _ = run_check(proj, check(f"command = {command}\npatterns = [\"*.py\"]\n"))
    assert run.outcome == "pass", run.output
    # (a generic command gets the variables but not the plugin: pytest-benchmark's
    # .benchmarks/ may appear there, see docs/checks.md)
    assert [p for p in tool_state_in(proj) if not p.endswith(".benchmarks")] == []


@pytest.mark.parametrize("options", [
    '"--output-format=json"', '"--output-format", "concise"', '"-o", "out.txt"',
    '"--output-file=out.txt", "--output-format=github"'])
def test_ruff_report_goes_where_the_adapter_reads_it(proj: Path, options: str) -> None:
    (proj / "a.py").write_text("import os\n")
    run, found = run_check(proj, check(f'command = ["ruff", "check", {options}, "{{files}}"]\n'
                                       'patterns = ["*.py"]\n'))
    assert [(f.file, f.code) for f in found] == [("a.py", "F401")], run.output
    assert not (proj / "out.txt").exists()
