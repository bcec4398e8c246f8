"""What `devloop service install` writes for one project: systemd or supervisord files.

A systemd instance is the shipped template plus a per-instance drop-in (user, project
directory, this devloop's absolute path), as docs/systemd.md describes, and for system
instances the shipped devloop.slice they run in; a supervisord
instance is the shipped program section with the same three filled in. Everything is
computed here and written by devloop.installed, so install, uninstall, --print and
update-hooks agree on every byte.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devloop import config, installed, resources, unitsafe
from devloop.errors import EX_NOUSER, EX_USAGE, DevloopError

SYSTEM = "system"
USER = "user"
SUPERVISOR = "supervisor"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,200}$")
SYSTEM_DIR = "etc/systemd/system"
USER_DIR = ".config/systemd/user"
SUPERVISOR_DIR = "etc/supervisor/conf.d"
DROPIN = "instance.conf"


def devloop_executable() -> list[str]:
    """This devloop, absolute: the console script next to the running interpreter.

    Not resolved through symlinks: a venv's python is a link out of the venv, and the
    script beside the link is the one that imports this venv's devloop.
    """
    script = Path(sys.executable).parent / "devloop"
    if os.access(script, os.X_OK):
        return [str(script)]
    argv0 = Path(sys.argv[0])
    if argv0.name == "devloop" and os.access(argv0, os.X_OK):
        return [str(argv0.absolute())]
    return [sys.executable, "-m", "devloop"]


@dataclass(frozen=True)
class Instance:
    kind: str  # SYSTEM, USER or SUPERVISOR
    name: str
    project: Path
    user: str
    command: tuple[str, ...]  # the devloop to run: its path (or python -m devloop)
    root: Path = Path("/")  # tests write under a temp dir instead of /

    @property
    def account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            raise DevloopError(f"no such user: {self.user}", EX_NOUSER) from None

    @property
    def writer(self) -> pwd.struct_passwd | None:
        """Who writes the files: a user unit lives in the user's home, so root writes it
        as that user (never through the user's symlinks); None: whoever runs devloop."""
        return self.account if self.kind == USER else None

    def _under_root(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def unit(self) -> str:
        return f"devloop@{self.name}.service"

    @property
    def unit_dir(self) -> Path:
        if self.kind == USER:
            return self._under_root(self.account.pw_dir) / USER_DIR
        return self.root / SYSTEM_DIR

    @property
    def template_path(self) -> Path:
        return self.unit_dir / "devloop@.service"

    @property
    def slice_path(self) -> Path | None:
        """devloop.slice beside the system template; None for a user unit (it runs in
        the user manager's own background.slice, which systemd ships)."""
        return self.unit_dir / "devloop.slice" if self.kind == SYSTEM else None

    @property
    def dropin_path(self) -> Path:
        return self.unit_dir / f"{self.unit}.d" / DROPIN

    @property
    def program(self) -> str:
        return f"devloop-{self.name}"

    @property
    def supervisor_path(self) -> Path:
        return self.root / SUPERVISOR_DIR / f"{self.program}.conf"

    @property
    def wants_link(self) -> Path:
        target = "default.target" if self.kind == USER else "multi-user.target"
        return self.unit_dir / f"{target}.wants" / self.unit


def make(kind: str, name: str, project: Path, user: str, command: list[str] | None = None,
         root: Path | None = None, *, allow_root: bool = False) -> Instance:
    """A checked Instance: a bad name is a usage error, a value no service file can hold
    is refused (exit 65), and running the daemon as root needs allow_root."""
    if not NAME_RE.match(name) or (kind == SUPERVISOR and ":" in name):
        raise DevloopError(f"bad instance name {name!r}: letters, digits and _ . : - only "
                           "(: not with --supervisor; try the project's directory name)",
                           EX_USAGE)
    inst = Instance(kind, name, project, unitsafe.user(user),
                    tuple(command or devloop_executable()), root or Path("/"))
    unitsafe.check_path("project directory", str(project))
    unitsafe.check_path("executable", inst.command[0])
    if inst.account.pw_uid == 0 and not allow_root:
        raise DevloopError(f"the daemon would run as root ({user}): give the project to its "
                           "user, name one with --user, or pass --allow-root", EX_USAGE)
    return inst


def template_text(kind: str) -> str:
    shipped = resources.read(resources.USER_UNIT if kind == USER else resources.SYSTEM_UNIT)
    return installed.header() + shipped


def slice_text() -> str:
    """The shipped slice as it is: it holds no value a project controls."""
    return installed.header() + resources.read(resources.SLICE_UNIT)


def _extra_writable(inst: Instance) -> list[str]:
    """The metrics textfile's and the published health file's directories, when the
    project asks for them (the sandbox is read-only elsewhere). devloop.toml is the
    project's: read as the daemon's user, never as root."""
    def config_dirs() -> list[str]:
        try:
            cfg = config.load(inst.project, follow_symlinks=False)
        except DevloopError:
            return []  # the daemon reports a bad config itself, with exit 78
        return [str(f.parent) for f in (cfg.metrics_textfile, cfg.health_file)
                if f is not None]
    dirs: list[str] = installed.run_as(inst.account, config_dirs)
    return dirs


def dropin_text(inst: Instance) -> str:
    d = str(inst.project)
    lines = [installed.header().rstrip("\n"),
             f"# devloop service install {inst.name}: the instance's user and project.",
             "[Unit]",
             f"Description={unitsafe.systemd_text('project directory', f'DevLoop checks for {d}')}",
             "[Service]"]
    if inst.kind == SYSTEM:
        lines.append(f"User={inst.user}")
    lines.append("Environment=" + unitsafe.systemd_word("project directory",
                                                        f"DEVLOOP_PROJECT_DIR={d}"))
    if inst.kind == SYSTEM:
        lines.append("ReadWritePaths=" + unitsafe.systemd_path("project directory",
                                                               f"{d}/.devloop", "-"))
        lines += ["ReadWritePaths=" + unitsafe.systemd_path(
            "metrics_textfile or health_file directory", p, "-") for p in _extra_writable(inst)]
    lines += ["ExecStart=",
              f"ExecStart={unitsafe.systemd_exec(list(inst.command))} watch --foreground "
              "${DEVLOOP_PROJECT_DIR}", ""]
    return "\n".join(lines)


def supervisor_text(inst: Instance) -> str:
    """The shipped program section, with the name, command, directory and user filled in."""
    d = str(inst.project)
    out = [installed.header(";").rstrip("\n")]
    for line in resources.read(resources.SUPERVISOR_PROGRAM).splitlines():
        if line.startswith(";"):
            continue
        key, _, _ = line.partition("=")
        if line == "[program:devloop]":
            line = f"[program:{inst.program}]"
        elif key == "command":
            line = "command=" + unitsafe.supervisor_command(
                [*inst.command, "watch", "--foreground", d])
        elif key == "directory":
            line = "directory=" + unitsafe.supervisor_value("project directory", d)
        elif key == "user":
            line = f"user={inst.user}"
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def files(inst: Instance) -> list[tuple[Path, str]]:
    """(path, text) of every file the instance needs, in the order they are written: the
    shared ones first (the template and the slice), the instance's own file last."""
    if inst.kind == SUPERVISOR:
        return [(inst.supervisor_path, supervisor_text(inst))]
    shared = [(inst.template_path, template_text(inst.kind))]
    if inst.slice_path is not None:
        shared.append((inst.slice_path, slice_text()))
    return [*shared, (inst.dropin_path, dropin_text(inst))]


def _systemctl(inst: Instance) -> list[str]:
    if inst.kind != USER:
        return ["systemctl"]
    if os.geteuid() == inst.account.pw_uid:
        return ["systemctl", "--user"]
    return ["systemctl", "--user", "-M", f"{inst.user}@"]


def install_commands(inst: Instance) -> list[list[str]]:
    if inst.kind == SUPERVISOR:
        return [["supervisorctl", "reread"], ["supervisorctl", "update", inst.program]]
    ctl = _systemctl(inst)
    return [[*ctl, "daemon-reload"], [*ctl, "enable", "--now", inst.unit]]


def uninstall_commands(inst: Instance) -> tuple[list[list[str]], list[list[str]]]:
    """(before removing the files, after): a unit is disabled while its file still exists."""
    if inst.kind == SUPERVISOR:
        return [], [["supervisorctl", "reread"], ["supervisorctl", "update", inst.program]]
    ctl = _systemctl(inst)
    return [[*ctl, "disable", "--now", inst.unit]], [[*ctl, "daemon-reload"]]


def template_users(inst: Instance) -> list[str]:
    """Files that show another instance needs the template: its drop-in directory
    (marked or not) or its enabled link."""
    found = [str(d) for d in sorted(inst.unit_dir.glob("devloop@?*.service.d"))
             if d.name != f"{inst.unit}.d"]
    return found + [str(link) for link in sorted(inst.unit_dir.glob("*.wants/devloop@?*.service"))
                    if link.name != inst.unit]


def loaded_instances(inst: Instance) -> list[str]:
    """Other instances the running systemd has loaded (started by hand, say)."""
    if inst.root != Path("/"):
        return []  # a test tree: the running systemd knows nothing of it
    try:
        r = subprocess.run([*_systemctl(inst), "list-units", "--all", "--plain", "--no-legend",
                            "--full", "devloop@*.service"], capture_output=True, text=True,
                           timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:
        return []
    units = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    return [f"{u} (loaded)" for u in units if u.startswith("devloop@") and u != inst.unit]


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
