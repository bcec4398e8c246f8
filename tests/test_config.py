"""devloop.toml: strict validation, one line naming file and key, exit 78; defaults."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devloop import config
from devloop.errors import EX_CONFIG, DevloopError

GOOD = '[checks.a]\ncommand = ["true"]\npatterns = ["*.py"]\n'


def load_error(root: Path, text: str) -> str:
    (root / "devloop.toml").write_text(text)
    with pytest.raises(DevloopError) as info:
        config.load(root)
    assert info.value.code == EX_CONFIG
    assert "\n" not in info.value.message
    assert str(root / "devloop.toml") in info.value.message
    return info.value.message


@pytest.mark.parametrize(("text", "key", "problem"), [
    (GOOD + "bogus = 1\n", "checks.a.bogus", "unknown key"),
    ("colour = 1\n" + GOOD, "colour", "unknown key"),
    ('[checks.a]\ncommand = "true"\npatterns = ["*"]\n', "checks.a.command", "list of strings"),
    ('[checks.a]\ncommand = []\npatterns = ["*"]\n', "checks.a.command", "must not be empty"),
    ('[checks.a]\ncommand = ["x"]\n', "checks.a.patterns", "missing"),
    ('[checks.a]\ncommand = ["x"]\npatterns = ["[z-a]"]\n', "checks.a.patterns", "bad pattern"),
    (GOOD + "debounce_ms = -1\n", "checks.a.debounce_ms", "between 0 and 600000"),
    (GOOD + "timeout_s = nan\n", "checks.a.timeout_s", "between"),
    (GOOD + "timeout_s = inf\n", "checks.a.timeout_s", "between"),
    (GOOD + "timeout_s = 1" + "0" * 400 + "\n", "checks.a.timeout_s", "between"),
    ("heartbeat_interval = nan\n" + GOOD, "heartbeat_interval", "between 1 and 3600"),
    (GOOD + "debounce_ms = 1.5\n", "checks.a.debounce_ms", "integer"),
    (GOOD + "timeout_s = true\n", "checks.a.timeout_s", "number"),
    (GOOD + 'on_busy = "later"\n', "checks.a.on_busy", '"queue" or "restart"'),
    (GOOD + 'run_on_start = "yes"\n', "checks.a.run_on_start", "true or false"),
    ('[checks.a]\ncommand = ["a", "b"]\nshell = true\npatterns = ["*"]\n', "checks.a.command",
     "one string"),
    ('[checks.a]\ncommand = ["x {files}"]\nshell = true\npatterns = ["*"]\n', "checks.a.command",
     "never reach a shell"),
    ("max_parallel = 0\n" + GOOD, "max_parallel", "between 1 and 256"),
    ('ignore = "build"\n' + GOOD, "ignore", "list of strings"),
    ("heartbeat_interval = 0\n" + GOOD, "heartbeat_interval", "between 1 and 3600"),
    ("checks = 3\n", "checks", "table"),
    ("", "checks", "at least one"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str,
                                       problem: str) -> None:
    message = load_error(tmp_path, text)
    assert f": {key}: " in message
    assert problem in message


def test_invalid_toml_and_bytes(tmp_path: Path) -> None:
    assert "invalid TOML" in load_error(tmp_path, "[checks\n")
    (tmp_path / "devloop.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(DevloopError, match="not UTF-8"):
        config.load(tmp_path)


def test_the_file_is_never_rewritten(tmp_path: Path) -> None:
    text = GOOD + "bogus = 1\n"
    load_error(tmp_path, text)
    assert (tmp_path / "devloop.toml").read_text() == text


def test_cli_exit_78_one_line_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(GOOD + "debounce_ms = 'soon'\n")
    for args in (["watch", "--foreground"], ["run"]):
        r = subprocess.run([sys.executable, "-m", "devloop", *args, str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert "checks.a.debounce_ms: must be an integer" in r.stderr


def test_defaults_without_config_work_with_nothing_installed(tmp_path: Path) -> None:
    cfg = config.load(tmp_path)
    names = [c.name for c in cfg.checks]
    assert names[0] == "python-syntax"
    assert "pytest" not in names  # no tests directory
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv_bin / "no-such-tool-but-here").write_text("#!/bin/sh\n")
    (venv_bin / "no-such-tool-but-here").chmod(0o755)
    (tmp_path / "pkg" / "tests").mkdir(parents=True)  # toolz/tests/ style
    assert config.find_tool(tmp_path, "no-such-tool-but-here") == str(
        venv_bin / "no-such-tool-but-here")
    by_name = {c.name: c for c in config.load(tmp_path).checks}
    # found in the venv or on PATH, but written by name only: no path of this machine
    assert all(not os.path.isabs(c.command[0]) for c in by_name.values())
    assert by_name["python-syntax"].command[:3] == ("python", "-m", "devloop.tools.pysyntax")
    assert "pytest" in by_name  # the tests live in pkg/tests


def test_tool_key_is_validated(tmp_path: Path) -> None:
    assert "checks.a.tool: must be one of generic, " in load_error(tmp_path, GOOD + 'tool = "x"\n')
    assert "checks.a.tool: must be one of" in load_error(tmp_path, GOOD + "tool = 3\n")
    shell = '[checks.a]\ncommand = "make lint"\nshell = true\npatterns = ["*"]\n'
    assert "a shell command can only be generic" in load_error(
        tmp_path, shell + 'tool = "ruff"\n')
    (tmp_path / "devloop.toml").write_text(GOOD + 'tool = "pytest"\n')
    assert config.load(tmp_path).checks[0].tool == "pytest"


def test_shell_command_is_one_string(tmp_path: Path) -> None:
    """What the README says: `command = "…"` with shell = true (a list of one also loads)."""
    for command in ('"make lint && echo ok"', '["make lint && echo ok"]'):
        (tmp_path / "devloop.toml").write_text(
            f"[checks.a]\ncommand = {command}\nshell = true\npatterns = [\"*\"]\n")
        check = config.load(tmp_path).checks[0]
        assert check.command == ("make lint && echo ok",) and check.shell
    assert "must be one string" in load_error(
        tmp_path, '[checks.a]\ncommand = 3\nshell = true\npatterns = ["*"]\n')
    assert "must not be empty" in load_error(
        tmp_path, '[checks.a]\ncommand = " "\nshell = true\npatterns = ["*"]\n')


toml_scalars = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.text(string.printable, max_size=12), st.lists(st.text(max_size=5), max_size=3),
    st.lists(st.integers(), max_size=3),
)
keys = st.sampled_from(["command", "patterns", "shell", "debounce_ms", "timeout_s",
                        "run_on_start", "on_busy", "tool", "bogus"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(check=st.dictionaries(keys, toml_scalars, max_size=8),
       top=st.dictionaries(st.sampled_from(["ignore", "max_parallel", "heartbeat_interval",
                                            "junk"]), toml_scalars, max_size=3))
def test_any_structure_loads_or_is_one_config_error(check: dict[str, object],
                                                    top: dict[str, object]) -> None:
    data = {**top, "checks": {"c": check}}
    try:
        config.parse(data, "devloop.toml")
    except DevloopError as exc:
        assert exc.code == EX_CONFIG
        assert exc.message.startswith("devloop.toml: ") and "\n" not in exc.message


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_loads_or_is_one_config_error(tmp_path_factory: pytest.TempPathFactory,
                                               text: str) -> None:
    root = tmp_path_factory.mktemp("cfg")
    (root / "devloop.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config.load(root)
    except DevloopError as exc:
        assert exc.code == EX_CONFIG and "\n" not in exc.message
