"""What `devloop service install` writes for one project: systemd or supervisord files.

A systemd instance is the shipped template plus a per-instance drop-in (user, project
directory, this devloop's absolute path), as docs/systemd.md describes; a supervisord
instance is the shipped program section with the same three filled in. Everything is
computed here and written by devloop.installed, so install, uninstall, --print and
update-hooks agree on every byte.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from devloop import config, installed, resources
from devloop.errors import EX_NOUSER, EX_USAGE, DevloopError

SYSTEM = "system"
USER = "user"
SUPERVISOR = "supervisor"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,200}$")
UNSAFE_PATH = re.compile(r"[\s\"'\\$;`]")  # kept out of unit and ini files, never escaped
SYSTEM_DIR = "etc/systemd/system"
USER_DIR = ".config/systemd/user"
SUPERVISOR_DIR = "etc/supervisor/conf.d"
DROPIN = "instance.conf"


def devloop_executable() -> str:
    """This devloop, absolute: the console script next to the running interpreter.

    Not resolved through symlinks: a venv's python is a link out of the venv, and the
    script beside the link is the one that imports this venv's devloop.
    """
    script = Path(sys.executable).parent / "devloop"
    if os.access(script, os.X_OK):
        return str(script)
    argv0 = Path(sys.argv[0])
    if argv0.name == "devloop" and os.access(argv0, os.X_OK):
        return str(argv0.absolute())
    return f"{sys.executable} -m devloop"


@dataclass(frozen=True)
class Instance:
    kind: str  # SYSTEM, USER or SUPERVISOR
    name: str
    project: Path
    user: str
    executable: str
    root: Path = Path("/")  # tests write under a temp dir instead of /

    @property
    def account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            raise DevloopError(f"no such user: {self.user}", EX_NOUSER) from None

    @property
    def owner(self) -> tuple[int, int] | None:
        """Who owns what we write: a user unit belongs to its user."""
        acct = self.account
        if self.kind == USER and os.geteuid() == 0 and acct.pw_uid != 0:
            return acct.pw_uid, acct.pw_gid
        return None

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


def make(kind: str, name: str, project: Path, user: str, executable: str | None = None,
         root: Path | None = None) -> Instance:
    """A checked Instance: bad names and paths are one-line usage errors."""
    if not NAME_RE.match(name):
        raise DevloopError(f"bad instance name {name!r}: letters, digits and _ . : - only "
                           "(try the project's directory name)", EX_USAGE)
    exe = executable or devloop_executable()
    for what, value in (("project directory", str(project)), ("devloop path", exe)):
        if UNSAFE_PATH.search(value.replace(" -m devloop", "")):
            raise DevloopError(f"{what} {value!r} has spaces, quotes, '$', ';' or "
                               "backslashes: not supported in unit files", EX_USAGE)
    inst = Instance(kind, name, project, user, exe, root or Path("/"))
    inst.account  # noqa: B018 - the user must exist
    return inst


def _unit_escape(text: str) -> str:
    return text.replace("%", "%%")


def template_text(inst: Instance) -> str:
    shipped = resources.read(resources.USER_UNIT if inst.kind == USER else resources.SYSTEM_UNIT)
    return installed.header() + shipped


def _extra_writable(inst: Instance) -> list[str]:
    """The metrics textfile's and the published health file's directories, when the
    project asks for them (the sandbox is read-only elsewhere)."""
    try:
        cfg = config.load(inst.project)
    except DevloopError:
        return []  # the daemon reports a bad config itself, with exit 78
    return [str(f.parent) for f in (cfg.metrics_textfile, cfg.health_file) if f is not None]


def dropin_text(inst: Instance) -> str:
    d = _unit_escape(str(inst.project))
    lines = [installed.header().rstrip("\n"),
             f"# devloop service install {inst.name}: the instance's user and project.",
             "[Service]"]
    if inst.kind == SYSTEM:
        lines.append(f"User={inst.user}")
    lines.append(f"Environment=DEVLOOP_PROJECT_DIR={d}")
    if inst.kind == SYSTEM:
        lines.append(f"ReadWritePaths=-{d}/.devloop")
        lines += [f"ReadWritePaths=-{_unit_escape(p)}" for p in _extra_writable(inst)]
    lines += ["ExecStart=",
              f"ExecStart={_unit_escape(inst.executable)} watch --foreground "
              "${DEVLOOP_PROJECT_DIR}", ""]
    return "\n".join(lines)


def supervisor_text(inst: Instance) -> str:
    """The shipped program section, with the name, command, directory and user filled in."""
    d = str(inst.project).replace("%", "%%")
    out = [installed.header(";").rstrip("\n")]
    for line in resources.read(resources.SUPERVISOR_PROGRAM).splitlines():
        if line.startswith(";"):
            continue
        key, _, _ = line.partition("=")
        if line == "[program:devloop]":
            line = f"[program:{inst.program}]"
        elif key == "command":
            line = f"command={inst.executable.replace('%', '%%')} watch --foreground {d}"
        elif key == "directory":
            line = f"directory={d}"
        elif key == "user":
            line = f"user={inst.user}"
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def files(inst: Instance) -> list[tuple[Path, str]]:
    """(path, text) of every file the instance needs, in the order they are written."""
    if inst.kind == SUPERVISOR:
        return [(inst.supervisor_path, supervisor_text(inst))]
    return [(inst.template_path, template_text(inst)), (inst.dropin_path, dropin_text(inst))]


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


def other_instances(inst: Instance) -> list[Path]:
    """devloop-written drop-ins of other instances, which still need the template."""
    found = []
    for dropin in sorted(inst.unit_dir.glob(f"devloop@*.service.d/{DROPIN}")):
        if dropin != inst.dropin_path and installed.mark_version(dropin) is not None:
            found.append(dropin)
    return found


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
