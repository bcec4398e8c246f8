"""The mypy adapter against real mypy and dmypy in a real project venv.

The venv (mypy installed with pip) is made once per session. The daemon tests
start a real `devloop watch --foreground` and look at the real dmypy server it owns.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_proc import DaemonProc, alive, devloop, status_json, wait_for

from devloop.tools import Invocation
from devloop.tools import mypy as mypy_tool

TOML = """\
[checks.mypy]
command = [".venv/bin/mypy", "--strict"]
patterns = ["*.py", "*.pyi", "pyproject.toml"]
debounce_ms = 0
"""
A_INT = "def f() -> int:\n    return 1\n"
A_STR = 'def f() -> str:\n    return "x"\n'
B = "from pkg.a import f\n\n\ndef g() -> int:\n    return f()\n"


@pytest.fixture(scope="session")
def mypy_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real venv with mypy (and so dmypy) installed by pip, shared by the session."""
    venv = tmp_path_factory.mktemp("mypy-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                        "mypy"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot pip install mypy: {r.stderr.strip()[-300:]}")
    return venv


def make_project(root: Path, venv: Path, files: dict[str, str], toml: str = TOML) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".venv").symlink_to(venv)
    (root / "devloop.toml").write_text(toml)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def mypy_state(root: Path) -> dict[str, Any] | None:
    return next((st for st in status_json(root) if st["check"] == "mypy"), None)


def fresh_result(root: Path, after: float, timeout: float = 120.0) -> dict[str, Any]:
    """The first mypy result of a run started after `after`."""
    def fresh() -> dict[str, Any] | None:
        st = mypy_state(root)
        return st if st is not None and st["started"] > after else None
    return wait_for(fresh, timeout, "a fresh mypy result")


def server_pid(root: Path) -> int | None:
    for path in glob.glob(str(root / ".devloop/cache/dmypy-*.json")):
        try:
            pid = json.loads(Path(path).read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(pid, int) and alive(pid):
            return pid
    return None


def edit(root: Path, name: str, text: str) -> float:
    before = time.time()
    (root / name).write_text(text)
    return before


# -- what to check ----------------------------------------------------------------------
def test_default_targets_src_and_flat_layouts(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for name in ("more_itertools/__init__.py", "more_itertools/more.py",
                 "more_itertools/more.pyi", "tests/__init__.py", "examples/a/setup.py",
                 "setup.py", "conftest.py", "tool.py", "docs/__init__.py"):
        (flat / name).parent.mkdir(parents=True, exist_ok=True)
        (flat / name).write_text("")
    assert mypy_tool.default_targets(flat) == ["more_itertools", "tool.py"]
    src = tmp_path / "srcl"
    (src / "src/click").mkdir(parents=True)
    (src / "src/click/__init__.py").write_text("")
    (src / "tests").mkdir()
    assert mypy_tool.default_targets(src) == ["src/click"]


@pytest.mark.parametrize(("name", "text", "names"), [
    ("pyproject.toml", '[tool.mypy]\nfiles = ["src/click"]\n', True),
    ("pyproject.toml", "[tool.mypy]\nstrict = true\n", False),
    ("setup.cfg", "[mypy]\nfiles = src/click, tests/typing\n", True),
    ("mypy.ini", "[mypy]\npackages = click\n", True),
    (".mypy.ini", "[mypy]\nmodules = six\n", True),
])
def test_config_as_mypy_reads_it(tmp_path: Path, name: str, text: str, names: bool) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / name).write_text(text)
    # mypy skips a setup.cfg / pyproject.toml without a mypy section
    (tmp_path / "setup.cfg").touch(exist_ok=True)
    found = mypy_tool.find_config(tmp_path)
    assert found.path == tmp_path / name
    assert found.names_targets is names


def test_output_notes_attached_or_dropped(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    for f in ("a.py", "b.py"):
        (tmp_path / "pkg" / f).write_text("")
    (tmp_path / "setup.cfg").write_text("")
    out = (
        'pkg/b.py:5:12: error: Incompatible return value type (got "str", expected "int")'
        "  [return-value]\n"
        "pkg/b.py:5:12: note: See https://mypy.rtfd.io/en/stable/_refs.html#code-return-value\n"
        'pkg/a.py:2:1: note: Revealed type is "builtins.int"\n'
        "setup.cfg: note: unused section(s): [mypy-colorama.*]\n"
        'pkg/a.py:1: error: Unused "type: ignore" comment  [unused-ignore]\n'
    )
    found, fatal = mypy_tool.parse_output(tmp_path, out)
    assert fatal == []
    assert [(f.file, f.line, f.column, f.severity, f.code) for f in found] == [
        ("pkg/b.py", 5, 12, "error", "return-value"),
        ("pkg/a.py", 2, 1, "note", None),
        ("pkg/a.py", 1, None, "error", "unused-ignore"),
    ]
    assert found[0].message.endswith("(note: See https://mypy.rtfd.io/en/stable/_refs.html"
                                     "#code-return-value)")
    _, fatal = mypy_tool.parse_output(
        tmp_path, 'pkg/a.py: error: Duplicate module named "pkg.a" (also at "pkg/a.pyi")\n')
    assert fatal and "Duplicate module" in fatal[0]


def test_real_layouts_have_no_duplicate_modules(tmp_path: Path, mypy_venv: Path) -> None:
    """A stub beside its module and several examples/*/setup.py: plain mypy on every file
    stops with "Duplicate module named"; the adapter checks the package instead."""
    toml = TOML.replace('"--strict"', '"--strict", "{files}"')
    root = make_project(tmp_path / "p", mypy_venv, {
        "more_itertools/__init__.py": "from more_itertools.more import first\n",
        "more_itertools/more.py": "def first(x):\n    return x\n",
        "more_itertools/more.pyi": "def first(x: int) -> int: ...\n",
        "examples/one/setup.py": "x = 1\n",
        "examples/two/setup.py": "x = 2\n",
        "more_itertools/bad.py": 'y: int = "no"\n',
    }, toml=toml)
    every = [str(p.relative_to(root)) for p in root.rglob("*.py*") if ".venv" not in p.parts]
    plain = subprocess.run([str(mypy_venv / "bin/mypy"), "--cache-dir=/dev/null", *every],
                           cwd=root, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Duplicate module named" in plain.stdout + plain.stderr
    r = devloop("run", str(root))
    assert r.returncode == 1, r.stdout + r.stderr
    st = mypy_state(root)
    assert st is not None and st["outcome"] == "fail"
    assert [(f["file"], f["line"], f["code"]) for f in st["findings"]] == [
        ("more_itertools/bad.py", 1, "assignment")]
    assert not (root / ".mypy_cache").exists()
    assert list((root / ".devloop/cache/mypy").iterdir())  # its incremental cache is ours


# -- through the daemon's dmypy server ----------------------------------------------------
def test_server_reports_every_file_a_change_breaks(
        tmp_path: Path, mypy_venv: Path, start_daemon: Callable[..., DaemonProc]) -> None:
    root = make_project(tmp_path / "p", mypy_venv, {
        "pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n',
        "pkg/__init__.py": "", "pkg/a.py": A_INT, "pkg/b.py": B})
    d = start_daemon(root)
    st = fresh_result(root, 0)
    assert st["outcome"] == "pass", st
    pid = server_pid(root)
    assert pid is not None
    assert Path(f"/proc/{pid}/status").read_text().count("PPid:\t" + str(d.pid)) == 1

    st = fresh_result(root, edit(root, "pkg/a.py", A_STR))
    assert st["outcome"] == "fail"
    assert st["files"] == ["pkg/a.py"]  # only a.py changed, and b.py is what broke
    assert [(f["file"], f["line"], f["code"]) for f in st["findings"]] == [
        ("pkg/b.py", 5, "return-value")]
    assert server_pid(root) == pid  # the same server: kept between runs

    st = fresh_result(root, edit(root, "pkg/a.py", A_INT))
    assert st["outcome"] == "pass" and st["findings"] == []
    assert not (root / ".dmypy.json").exists() and not (root / ".mypy_cache").exists()

    assert d.stop() == 0
    wait_for(lambda: not alive(pid), 10, "the server to stop with the daemon")
    assert not glob.glob(str(root / ".devloop/cache/dmypy-*.json"))


def test_server_killed_is_restarted_and_config_change_restarts_it(
        tmp_path: Path, mypy_venv: Path, start_daemon: Callable[..., DaemonProc]) -> None:
    root = make_project(tmp_path / "p", mypy_venv, {
        "pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n',
        "pkg/__init__.py": "", "pkg/a.py": A_INT, "pkg/b.py": B,
        "pkg/c.py": "def h(x):\n    return x\n"})
    toml = TOML.replace('"--strict"', '"--no-strict-optional"')
    (root / "devloop.toml").write_text(toml)
    start_daemon(root)
    assert fresh_result(root, 0)["outcome"] == "pass"
    first = server_pid(root)
    assert first is not None

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first), 10, "the server to die")
    st = fresh_result(root, edit(root, "pkg/a.py", A_STR))
    assert st["outcome"] == "fail", st
    assert [f["file"] for f in st["findings"]] == ["pkg/b.py"]
    second = server_pid(root)
    assert second is not None and second != first

    # the project's mypy configuration changes: a new server reads it
    st = fresh_result(root, edit(root, "pyproject.toml",
                                 '[tool.mypy]\nfiles = ["pkg"]\ndisallow_untyped_defs = true\n'))
    assert sorted(f["file"] for f in st["findings"]) == ["pkg/b.py", "pkg/c.py"], st
    third = server_pid(root)
    assert third is not None and third != second
    assert not alive(second)


def test_server_dies_with_a_killed_daemon(
        tmp_path: Path, mypy_venv: Path, start_daemon: Callable[..., DaemonProc]) -> None:
    root = make_project(tmp_path / "p", mypy_venv, {
        "pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n',
        "pkg/__init__.py": "", "pkg/a.py": A_INT})
    d = start_daemon(root)
    assert fresh_result(root, 0)["outcome"] == "pass"
    pid = server_pid(root)
    assert pid is not None
    d.stop(signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the server to die with its daemon")


def test_rewrite_within_the_same_second_is_seen(
        tmp_path: Path, mypy_venv: Path, start_daemon: Callable[..., DaemonProc]) -> None:
    """dmypy compares whole-second mtimes and sizes: a same-size rewrite within the second
    of the version it read looks unchanged to it. The daemon sees it and restarts it."""
    root = make_project(tmp_path / "p", mypy_venv, {
        "pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n',
        "pkg/__init__.py": "", "pkg/b.py": B})
    second = int(time.time()) + 30  # whole seconds from now on can still be written

    def put(text: str, at: float) -> float:
        tmp = root / "pkg/.a.tmp"
        tmp.write_text(text)
        os.utime(tmp, (at, at))
        before = time.time()
        os.replace(tmp, root / "pkg/a.py")  # content and mtime arrive together
        return before

    put(A_INT, second + 0.1)
    start_daemon(root)
    assert fresh_result(root, 0)["outcome"] == "pass"
    first = server_pid(root)
    same_size = A_INT.replace("int", "str")
    assert len(same_size) == len(A_INT)
    st = fresh_result(root, put(same_size, second + 0.5))
    assert st["outcome"] == "fail", st
    assert sorted(f["file"] for f in st["findings"]) == ["pkg/a.py", "pkg/b.py"]
    assert server_pid(root) != first


def test_checks_keep_their_bytecode_in_the_cache(tmp_path: Path) -> None:
    """With PYTHONPYCACHEPREFIX in the cache, PYTHONDONTWRITEBYTECODE=1 (set by the unit for
    the daemon) would make every Python check compile its imports from source each run."""
    from devloop.tools import env as tool_env

    env = tool_env.environment(tmp_path, {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin"},
                               tmp_path / "cache")
    assert "PYTHONDONTWRITEBYTECODE" not in env
    r = subprocess.run([sys.executable, "-c", "import sys; print(sys.dont_write_bytecode)"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False"
    subprocess.run([sys.executable, "-c", "import json"], env=env, check=True, timeout=60)
    assert list((tmp_path / "cache/pycache").rglob("*.pyc"))


@pytest.mark.parametrize(("argv", "files", "head", "flags", "targets"), [
    (["mypy", "--strict", "a.py"], ("a.py",), ("mypy",), ("--strict",), False),
    (["mypy", "-m", "mod"], (), ("mypy",), ("-m", "mod"), True),
    (["python3", "-m", "mypy", "pkg"], (), ("python3", "-m", "mypy"), ("pkg",), True),
    (["mypy", "--config-file", "pkg", "./-x.py"], ("-x.py",), ("mypy",),
     ("--config-file", "pkg"), False),
])
def test_command_taken_apart(tmp_path: Path, argv: list[str], files: tuple[str, ...],
                             head: tuple[str, ...], flags: tuple[str, ...],
                             targets: bool) -> None:
    (tmp_path / "pkg").mkdir()
    inv = Invocation(argv=argv, env={"PATH": "/nonexistent"}, root=tmp_path, files=files,
                     whole=False, report_dir=tmp_path, cache_dir=tmp_path)
    cmd = mypy_tool.Command.parse(inv)
    assert (cmd.mypy, cmd.flags, cmd.user_targets) == (head, flags, targets)
