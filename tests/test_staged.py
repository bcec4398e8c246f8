"""The pre-commit hook checks what is committed (the index), in a real git repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ops_helpers import devloop, make_project

TOML = """[checks.syntax]
command = ["python3", "-m", "devloop.tools.pysyntax", "{files}"]
patterns = ["*.py"]
"""


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com",
                           "-c", "user.name=t", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def repo_with_hook(root: Path) -> Path:
    repo = make_project(root, TOML)
    assert git(repo, "init", "-q").returncode == 0
    (repo / "ok.py").write_text("x = 1\n")
    assert git(repo, "add", "-A").returncode == 0
    assert git(repo, "commit", "-q", "--no-verify", "-m", "start").returncode == 0
    assert devloop("update-hooks", str(repo)).returncode == 0
    return repo


def test_bad_staged_version_with_a_good_unstaged_edit_fails(tmp_path: Path) -> None:
    repo = repo_with_hook(tmp_path / "repo")
    (repo / "bad.py").write_text("x = (\n")
    assert git(repo, "add", "bad.py").returncode == 0
    (repo / "bad.py").write_text("x = 1\n")  # fixed in the working tree, not staged
    # a fresh, passing result of the working tree is in the database: it must not count
    assert devloop("run", str(repo)).returncode == 0
    r = git(repo, "commit", "-q", "-m", "bad")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "bad.py:1" in r.stdout + r.stderr
    assert "still fresh" not in r.stderr
    assert (repo / "bad.py").read_text() == "x = 1\n"  # the working tree is untouched
    assert git(repo, "diff", "--cached", "--name-only").stdout.split() == ["bad.py"]


def test_good_staged_version_with_a_bad_unstaged_edit_passes(tmp_path: Path) -> None:
    repo = repo_with_hook(tmp_path / "repo")
    (repo / "new.py").write_text("y = 2\n")
    assert git(repo, "add", "new.py").returncode == 0
    (repo / "new.py").write_text("y = (\n")
    r = git(repo, "commit", "-q", "-m", "good")
    assert r.returncode == 0, r.stdout + r.stderr
    assert git(repo, "show", "HEAD:new.py").stdout == "y = 2\n"


def test_commit_of_paths_checks_their_content(tmp_path: Path) -> None:
    """`git commit FILE` commits the working-tree FILE through a temporary index."""
    repo = repo_with_hook(tmp_path / "repo")
    (repo / "ok.py").write_text("x = (\n")
    r = git(repo, "commit", "-q", "-m", "bad", "ok.py")
    assert r.returncode != 0 and "ok.py:1" in r.stdout + r.stderr


def test_stored_result_reused_only_for_identical_content(tmp_path: Path) -> None:
    repo = repo_with_hook(tmp_path / "repo")
    (repo / "two.py").write_text("z = 3\n")
    assert git(repo, "add", "two.py").returncode == 0
    assert devloop("run", str(repo)).returncode == 0
    r = devloop("run", str(repo), "--staged", "--reuse-fresh")
    assert r.returncode == 0 and "syntax: pass (the daemon's result, still fresh)" in r.stderr
    (repo / "two.py").write_text("z = 4\n")  # same size, other bytes: the result is stale
    assert devloop("run", str(repo)).returncode == 0
    r = devloop("run", str(repo), "--staged", "--reuse-fresh")
    assert r.returncode == 0 and "still fresh" not in r.stderr


def test_subdirectory_project(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    assert git(top, "init", "-q").returncode == 0
    project = make_project(top / "sub", TOML)
    (project / "ok.py").write_text("x = 1\n")
    assert devloop("update-hooks", str(project)).returncode == 0
    (project / "bad.py").write_text("x = (\n")
    assert git(top, "add", "-A").returncode == 0
    (project / "bad.py").write_text("x = 1\n")
    r = git(top, "commit", "-q", "-m", "bad")
    assert r.returncode != 0 and "bad.py:1" in r.stdout + r.stderr
