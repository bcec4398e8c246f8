"""init, run and status from the command line, on real projects."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

from daemon_proc import devloop


def test_init_writes_loadable_defaults_and_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.o")
    r = devloop("init", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((tmp_path / "devloop.toml").read_text())
    assert "python-syntax" in data["checks"]
    assert (tmp_path / ".gitignore").read_text() == "*.o\n.devloop/\n"
    again = devloop("init", str(tmp_path))
    assert again.returncode == 73 and "already exists" in again.stderr
    assert (tmp_path / ".gitignore").read_text().count(".devloop/") == 1


def test_run_whole_project_then_files(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(
        "[checks.syntax]\n"
        f'command = ["{sys.executable}", "-m", "devloop.tools.pysyntax", "{{files}}"]\n'
        'patterns = ["*.py"]\n'
    )
    (tmp_path / "ok.py").write_text("x = 1\n")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "bad.py").write_text("def (\n")  # ignored
    r = devloop("run", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.py").write_text("def (\n")
    r = devloop("run", str(tmp_path))
    assert r.returncode == 1
    assert "sub/bad.py:1:" in r.stdout
    status = json.loads(devloop("status", str(tmp_path), "--json").stdout)
    assert status[0]["files"] is None  # the whole project
    assert [f["file"] for f in status[0]["findings"]] == ["sub/bad.py"]
    r = devloop("run", str(tmp_path), "--files", "ok.py")
    assert r.returncode == 0
    status = json.loads(devloop("status", str(tmp_path), "--json").stdout)
    assert status[0]["files"] == ["ok.py"]
    assert [f["file"] for f in status[0]["findings"]] == ["sub/bad.py"]  # kept: not rechecked


def test_status_without_results_is_66(tmp_path: Path) -> None:
    r = devloop("status", str(tmp_path))
    assert r.returncode == 66 and "no results yet" in r.stderr


def test_command_not_found_is_an_error_outcome(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(
        '[checks.nope]\ncommand = ["no-such-tool-xyz"]\npatterns = ["*"]\n'
    )
    r = devloop("run", str(tmp_path))
    assert r.returncode == 1
    assert "! nope: error" in r.stdout
    assert "cannot start 'no-such-tool-xyz'" in r.stdout


def test_huge_output_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(
        '[checks.loud]\ncommand = ["head -c 300000000 /dev/zero | tr \'\\\\0\' x; echo END"]\n'
        'shell = true\npatterns = ["*"]\n'
    )
    r = devloop("run", str(tmp_path))
    assert r.returncode == 0, r.stdout
    status = json.loads(devloop("status", str(tmp_path), "--json").stdout)
    assert status[0]["output"].rstrip().endswith("END")
    assert len(status[0]["output"]) <= 64 * 1024


def test_run_reuses_fresh_results_only_while_fresh(tmp_path: Path) -> None:
    (tmp_path / "devloop.toml").write_text(
        "[checks.syntax]\n"
        f'command = ["{sys.executable}", "-m", "devloop.tools.pysyntax", "{{files}}"]\n'
        'patterns = ["*.py"]\n'
    )
    (tmp_path / "ok.py").write_text("x = 1\n")
    assert devloop("run", str(tmp_path)).returncode == 0

    def runs() -> int:
        import sqlite3
        db = sqlite3.connect(tmp_path / ".devloop" / "devloop.db")
        (n,) = db.execute("SELECT COUNT(*) FROM runs").fetchone()
        db.close()
        return int(n)

    r = devloop("run", str(tmp_path), "--reuse-fresh", "--files", "ok.py")
    assert r.returncode == 0 and "still fresh" in r.stderr
    assert runs() == 1
    (tmp_path / "ok.py").write_text("def (\n")  # changed since: runs again, and fails
    r = devloop("run", str(tmp_path), "--reuse-fresh", "--files", "ok.py")
    assert r.returncode == 1 and "still fresh" not in r.stderr
    assert runs() == 2


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path: Path) -> None:
    """`devloop status --json | head`: the reader leaves early; exit 141 as SIGPIPE would."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "devloop", "metrics", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err
