"""`devloop update-hooks`: a real git repo whose pre-commit hook blocks a bad commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ops_helpers import devloop, make_project

AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []

TOML = """[checks.syntax]
command = ["python3", "-m", "devloop.tools.pysyntax", "{files}"]
patterns = ["*.py"]
"""


def git(repo: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@example.com",
                           "-c", "user.name=t", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def test_hook_blocks_bad_commit_and_lets_good_one_through(tmp_path: Path) -> None:
    repo = make_project(tmp_path / "repo", TOML)
    assert git(repo, "init", "-q").returncode == 0
    r = devloop("update-hooks", str(repo))
    hook = repo / ".git" / "hooks" / "pre-commit"
    assert r.returncode == 0 and f"created    {hook}" in r.stdout
    assert hook.stat().st_mode & 0o111
    (repo / "bad.py").write_text("x = (\n")
    (repo / "other.txt").write_text("not python\n")
    git(repo, "add", "bad.py", "other.txt", "devloop.toml")
    blocked = git(repo, "commit", "-qm", "bad")
    assert blocked.returncode != 0
    assert "bad.py:1" in blocked.stderr and "commit blocked" in blocked.stderr
    assert git(repo, "log", "--oneline").returncode != 0  # no commit at all
    (repo / "bad.py").write_text("x = 1\n")
    git(repo, "add", "bad.py")
    ok = git(repo, "commit", "-qm", "good")
    assert ok.returncode == 0, ok.stderr
    # a commit with no Python file runs no check
    (repo / "other.txt").write_text("changed\n")
    git(repo, "add", "other.txt")
    assert git(repo, "commit", "-qm", "txt").returncode == 0
    assert "unchanged" in devloop("update-hooks", str(repo)).stdout


def test_hook_in_a_subdirectory_project(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    project = make_project(top / "svc", TOML)
    git(top, "init", "-q")
    assert devloop("update-hooks", str(project)).returncode == 0
    (top / "outside.py").write_text("x = (\n")  # not the project's: not checked
    (project / "bad.py").write_text("def (:\n")
    git(top, "add", "-A")
    r = git(top, "commit", "-qm", "x")
    assert r.returncode != 0 and "bad.py:1" in r.stderr and "outside.py" not in r.stderr


def test_never_overwrites_a_foreign_hook_and_refreshes_its_own(tmp_path: Path) -> None:
    repo = make_project(tmp_path / "repo", TOML)
    git(repo, "init", "-q")
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho mine\n")
    r = devloop("update-hooks", str(repo))
    assert r.returncode == 0 and "left alone" in r.stdout and "not written by devloop" in r.stdout
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    hook.unlink()
    devloop("update-hooks", str(repo))
    hook.write_text(hook.read_text().replace("installed by devloop 0", "installed by devloop 0.0.0"
                                             "-old 0", 1))
    r = devloop("update-hooks", str(repo))
    assert "updated" in r.stdout and "0.0.0-old" in r.stdout


def test_refreshes_installed_units_and_supervisor_programs(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", TOML)
    root = tmp_path / "root"
    for extra in ((), ("--supervisor",)):
        r = devloop("service", "install", "p", "--dir", str(project), "--root", str(root),
                    *extra, *AS_ROOT)
        assert r.returncode == 0, r.stderr
    unit_dir = root / "etc" / "systemd" / "system"
    template = unit_dir / "devloop@.service"
    fresh = template.read_text()
    template.write_text(fresh.replace("installed by devloop ", "installed by devloop 0.0.1 ", 1)
                        .replace("RestartSec=5s", "RestartSec=1s"))
    foreign = unit_dir / "devloop@q.service.d" / "instance.conf"
    foreign.parent.mkdir()
    foreign.write_text("[Service]\nUser=nobody\n")
    sup = root / "etc" / "supervisor" / "conf.d" / "devloop-p.conf"
    sup.write_text(sup.read_text().replace("startretries=5", "startretries=1"))
    r = devloop("update-hooks", str(project), "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert f"updated    {template}" in r.stdout
    assert f"updated    {sup}" in r.stdout
    assert f"unchanged  {unit_dir / 'devloop@p.service.d' / 'instance.conf'}" in r.stdout
    assert "daemon-reload" in r.stdout
    assert template.read_text() == fresh and "startretries=5" in sup.read_text()
    assert foreign.read_text() == "[Service]\nUser=nobody\n"
    assert "no git repository" in r.stdout
