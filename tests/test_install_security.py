"""What root writes for `service install` and `update-hooks` (issue 9, issue 10 item 5).

Real files, real FIFOs, real symlinks, a real git; the files these write are loaded by a
real systemd and supervisord in tests/test_service.py and tests/test_supervisor.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from ops_helpers import REPO, devloop, make_project
from test_update_hooks import git

AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []
TOML = '[checks.a]\ncommand = ["true"]\npatterns = ["*.py"]\n'
# issue 9's exact injection: a newline in metrics_textfile would start directives
INJECTION = ('metrics_textfile = "/var/lib/m\\nUser=root\\nExecStartPre=+/bin/sh -c '
             'id>/tmp/pwn\\n/a.prom"\n')


def _install(project: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return devloop("service", "install", "p", "--dir", str(project), "--root", str(root),
                   *AS_ROOT, *args)


def _dropin(root: Path) -> Path:
    return root / "etc/systemd/system/devloop@p.service.d/instance.conf"


def _one_line(r: subprocess.CompletedProcess[str]) -> bool:
    return len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_the_injection_is_refused_and_nothing_written(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", INJECTION + TOML)
    root = tmp_path / "root"
    r = _install(project, root)
    assert r.returncode == 65, r.stdout + r.stderr
    assert _one_line(r) and "metrics_textfile" in r.stderr
    assert not root.exists()
    # a user unit and a supervisord program have no ReadWritePaths=: nothing to inject
    for kind in ("--user-unit", "--supervisor"):
        assert _install(project, root, kind).returncode == 0
    assert "/tmp/pwn" not in _all_text(root)


def _all_text(root: Path) -> str:
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


def test_the_injection_planted_after_install_is_refused_by_update_hooks(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", TOML)
    root = tmp_path / "root"
    assert _install(project, root).returncode == 0
    before = _dropin(root).read_text()
    (project / "devloop.toml").write_text(INJECTION + TOML)
    r = devloop("update-hooks", str(project), "--root", str(root))
    assert r.returncode == 65, r.stdout + r.stderr
    assert "metrics_textfile" in r.stdout and "Traceback" not in r.stderr
    assert _dropin(root).read_text() == before
    assert "/tmp/pwn" not in _all_text(root)


@pytest.mark.parametrize("name", ["new\nline", "carriage\rreturn", "tab\there", "bell\x07",
                                  "not-utf8-\udcff", "line\u2028separator"])
def test_a_project_path_with_a_control_character_is_refused(tmp_path: Path, name: str) -> None:
    project = make_project(tmp_path / name, TOML)
    root = tmp_path / "root"
    for kind in ([], ["--supervisor"], ["--user-unit"]):
        r = _install(project, root, *kind)
        assert r.returncode == 65 and _one_line(r), r.stderr
    assert not root.exists()


@pytest.mark.parametrize("exe", ["/opt/dl$HOME/devloop", "relative/devloop", "/opt/a/../devloop",
                                 "/opt/it's/devloop", '/opt/a"b/devloop', "/opt/a\\b/devloop"])
def test_an_executable_no_unit_can_hold_is_refused(tmp_path: Path, exe: str) -> None:
    project = make_project(tmp_path / "proj", TOML)
    r = _install(project, tmp_path / "root", "--executable", exe)
    assert r.returncode == 65 and _one_line(r), r.stderr
    assert not (tmp_path / "root").exists()


def test_quoting_and_percent_are_escaped(tmp_path: Path) -> None:
    """The file text; tests/test_service.py has systemd load and run the same shapes."""
    project = make_project(tmp_path / "a b %n 'q\" \\x", 'metrics_textfile = "/m %i/x.prom"\n'
                           + TOML)
    root = tmp_path / "root"
    r = _install(project, root, "--executable", "/opt/dev loop/%h/devloop")
    assert r.returncode == 0, r.stderr
    text = _dropin(root).read_text()
    q = str(project).replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    assert f'Environment="DEVLOOP_PROJECT_DIR={q}"\n' in text
    assert f'ReadWritePaths="-{q}/.devloop"\n' in text
    assert 'ReadWritePaths="-/m %%i"\n' in text
    assert 'ExecStart="/opt/dev loop/%%h/devloop" watch --foreground ${DEVLOOP_PROJECT_DIR}\n' \
        in text
    sup = _install(project, root, "--supervisor", "--executable", "/opt/dev loop/%h/devloop")
    assert sup.returncode == 0, sup.stderr
    conf = (root / "etc/supervisor/conf.d/devloop-p.conf").read_text()
    assert "command='/opt/dev loop/%%h/devloop' watch --foreground" in conf
    assert f"directory={str(project).replace('%', '%%')}\n" in conf
    # update-hooks reads back exactly what was written (it only puts in its own devloop)
    again = devloop("update-hooks", str(project), "--root", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    after = _dropin(root).read_text()
    assert [ln for ln in after.splitlines() if "ExecStart" not in ln] == \
        [ln for ln in text.splitlines() if "ExecStart" not in ln]


def test_supervisor_comment_after_a_blank_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "x ;y", TOML)
    r = _install(project, tmp_path / "root", "--supervisor")
    assert r.returncode == 65 and _one_line(r), r.stderr


# -- project files read as root: never block, never follow a symlink -------------------

def test_a_fifo_as_devloop_toml_hangs_nothing(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    os.mkfifo(project / "devloop.toml")
    root = tmp_path / "root"
    r = _install(project, root)  # devloop() times out (fails) after 60 s on a hang
    assert r.returncode == 0, r.stderr
    assert "metrics" not in _dropin(root).read_text()
    r = devloop("update-hooks", str(project), "--root", str(root))
    assert r.returncode == 0, r.stderr
    run = devloop("run", str(project))
    assert run.returncode == 78 and "not a regular file" in run.stderr


def test_a_huge_devloop_toml_is_refused_not_read(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", "# x\n" * (1 << 19))  # 2 MiB of comments
    run = devloop("run", str(project))
    assert run.returncode == 78 and "larger than" in run.stderr and _one_line(run)


def test_a_symlinked_devloop_toml_is_not_followed_by_service_install(tmp_path: Path) -> None:
    secret = make_project(tmp_path / "elsewhere", 'metrics_textfile = "/secret/dir/x.prom"\n'
                          + TOML)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "devloop.toml").symlink_to(secret / "devloop.toml")
    root = tmp_path / "root"
    assert _install(project, root).returncode == 0
    assert "/secret/dir" not in _dropin(root).read_text()


def test_a_root_owned_project_needs_allow_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a project root owns")
    project = make_project(tmp_path / "proj", TOML)
    root = tmp_path / "root"
    r = devloop("service", "install", "p", "--dir", str(project), "--root", str(root))
    assert r.returncode == 64 and _one_line(r) and "--allow-root" in r.stderr
    assert not root.exists()
    assert _install(project, root).returncode == 0
    assert "User=root\n" in _dropin(root).read_text()


def test_a_project_of_a_uid_without_a_name_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    project = make_project(tmp_path / "proj", TOML)
    os.chown(project, 54321, 54321)  # no passwd entry
    r = devloop("service", "install", "p", "--dir", str(project), "--root", str(tmp_path / "r"))
    assert r.returncode == 67 and _one_line(r) and "uid 54321" in r.stderr, r.stderr


def test_a_daemon_user_other_than_the_owner_is_warned_about(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    project = make_project(tmp_path / "proj", TOML)
    os.chown(project, 65534, 65534)  # nobody's project, daemon's daemon
    r = devloop("service", "install", "p", "--dir", str(project), "--user", "daemon",
                "--root", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "runs commands as daemon" in r.stderr


# -- the git hook --------------------------------------------------------------------------

def test_hooks_path_outside_the_repository_is_not_written(tmp_path: Path) -> None:
    repo = make_project(tmp_path / "repo", TOML)
    git(repo, "init", "-q")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    git(repo, "config", "core.hooksPath", str(elsewhere))
    r = devloop("update-hooks", str(repo))
    assert r.returncode == 0, r.stderr
    assert "left alone" in r.stdout and "core.hooksPath" in r.stdout
    assert list(elsewhere.iterdir()) == []
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()


def test_the_hook_says_in_one_line_when_devloop_is_missing(tmp_path: Path) -> None:
    repo = make_project(tmp_path / "repo", TOML)
    git(repo, "init", "-q")
    assert devloop("update-hooks", str(repo)).returncode == 0
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    env = {**os.environ, "DEVLOOP": str(tmp_path / "uninstalled" / "devloop")}
    r = git(repo, "commit", "-qm", "x", env=env)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "is missing" in r.stderr, r.stderr
    assert "update-hooks" in r.stderr and "xargs" not in r.stderr


# -- uninstall and upgrade keep every instance working (issue 10 item 5) ------------------

def test_the_template_stays_while_any_instance_uses_it(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", TOML)
    root = tmp_path / "root"
    unit_dir = root / "etc/systemd/system"
    for name in ("probe", "proj"):
        r = devloop("service", "install", name, "--dir", str(project), "--root", str(root),
                    *AS_ROOT)
        assert r.returncode == 0, r.stderr
    mine = unit_dir / "devloop@proj.service.d/instance.conf"  # edited, mark removed
    mine.write_text(mine.read_text().split("\n", 1)[1])
    r = devloop("service", "uninstall", "probe", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert (unit_dir / "devloop@.service").exists() and (unit_dir / "devloop.slice").exists()
    assert "kept" in r.stdout and "devloop@proj.service.d" in r.stdout
    # an enabled instance without any drop-in also keeps it
    mine.unlink()
    mine.parent.rmdir()
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir()
    (wants / "devloop@other.service").symlink_to(unit_dir / "devloop@.service")
    r = devloop("service", "uninstall", "proj", "--root", str(root))
    assert r.returncode == 0 and (unit_dir / "devloop@.service").exists(), r.stdout
    assert (unit_dir / "devloop.slice").exists()  # the slice goes only with the template
    (wants / "devloop@other.service").unlink()
    r = devloop("service", "uninstall", "proj", "--root", str(root))
    assert r.returncode == 0 and not (unit_dir / "devloop@.service").exists(), r.stdout
    assert not (unit_dir / "devloop.slice").exists()


def test_update_hooks_names_what_it_leaves_and_refreshes_the_template(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", TOML)
    root = tmp_path / "root"
    assert _install(project, root).returncode == 0
    template = root / "etc/systemd/system/devloop@.service"
    template.write_text(template.read_text().replace("installed by devloop ",
                                                     "installed by devloop 0.0.1 ", 1))
    dropin = _dropin(root)
    dropin.write_text(dropin.read_text().split("\n", 1)[1])  # the user's own now
    slice_ = template.with_name("devloop.slice")  # an install from before the slice
    slice_.unlink()
    r = devloop("update-hooks", str(project), "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert f"updated    {template}" in r.stdout
    assert f"created    {slice_}" in r.stdout and "CPUWeight=20" in slice_.read_text()
    assert f"left alone {dropin}" in r.stdout
    assert "daemon-reload" in r.stdout


def test_the_description_names_the_project_directory(tmp_path: Path) -> None:
    project = make_project(tmp_path / "src" / "proj", TOML)
    root = tmp_path / "root"
    r = _install(project, root, "--user-unit")
    assert r.returncode == 0, r.stderr
    dropins = list(root.rglob("devloop@p.service.d/instance.conf"))
    assert f"Description=DevLoop checks for {project}\n" in dropins[0].read_text()


def test_the_version_has_one_source() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    r = devloop("--version")
    assert r.stdout.split() == ["devloop", version("devloop-daemon")]


# -- never tell an operator to install someone else's package (issue 9 item 4) ------------

INSTALL = re.compile(r"\b(?:pipx|pip3?|uv pip)\s+install\b(?P<args>[^\n`#;&|]*)")
BARE_NAME = re.compile(r"^devloop[\w.-]*(\[[^\]]*\])?([<>=!~].*)?$")


def bare_installs(text: str) -> list[str]:
    """`pip install NAME` commands whose NAME is a devloop-ish name an index resolves."""
    found = []
    for m in INSTALL.finditer(text):
        for word in m.group("args").split():
            if not word.startswith("-") and BARE_NAME.match(word) and \
                    not word.endswith((".whl", ".tar.gz", ".zip")):
                found.append(m.group(0).strip())
    return found


def test_the_scanner_catches_a_bare_install() -> None:
    assert bare_installs("    /opt/devloop/bin/pip install devloop\n")
    assert bare_installs("pipx install devloop  # x\n")
    assert bare_installs("pip install -U 'devloop'\n".replace("'", ""))
    assert bare_installs("pip install devloop-daemon==0.1\n")
    assert not bare_installs("pip install /src/devloop\n")
    assert not bare_installs("pip install ./dist/devloop_daemon-0.1.0-py3-none-any.whl\n")
    assert not bare_installs("pip install -q -e '.[test]'\n")


def test_no_doc_installs_devloop_by_name() -> None:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    bad = {str(d.relative_to(REPO)): bare_installs(d.read_text()) for d in docs}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_names_found_in_a_directory_reach_the_terminal_escaped(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", TOML)
    root = tmp_path / "root"
    assert _install(project, root).returncode == 0
    (root / "etc/systemd/system/devloop@\x1b]0;pwn\x07.service.d").mkdir()
    r = devloop("service", "uninstall", "p", "--root", str(root))
    assert r.returncode == 0 and "kept" in r.stdout, r.stdout
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\\x1b]0;pwn" in r.stdout
