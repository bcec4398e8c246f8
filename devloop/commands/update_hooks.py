"""`devloop update-hooks [DIR]`: after an upgrade, refresh every file devloop installed.

The project's git pre-commit hook (installed when missing), and the unit templates,
drop-ins and supervisord programs that `devloop service install` wrote. A file without
the 'installed by devloop' mark is reported and never touched.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
from pathlib import Path

from devloop import hooks, installed, service
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.commands.service import ROOT_ENV
from devloop.errors import EX_OK, DevloopError


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "update-hooks",
        help="refresh the git pre-commit hook, unit files and supervisor configs devloop wrote",
        description="Install or refresh DIR's git pre-commit hook (it runs 'devloop run "
        "--files' on the staged files and blocks the commit when a check fails), and refresh "
        "the systemd units, drop-ins and supervisord programs written by 'devloop service "
        "install'. Files devloop did not write are left alone, and said so.",
    )
    add_dir_argument(p)
    p.add_argument("--print", action="store_true", dest="dry_run",
                   help="say what would change; change nothing")
    p.add_argument("--root", type=Path, default=os.environ.get(ROOT_ENV) or None,
                   help=f"look under this directory instead of / (tests; ${ROOT_ENV})")
    p.set_defaults(func=run)


def _setting(text: str, pattern: str) -> str | None:
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1).replace("%%", "%") if m else None


def _instances(root: Path, exe: str) -> list[service.Instance]:
    """The instances devloop installed, rebuilt from the files it wrote for them."""
    found: list[service.Instance] = []
    me = pwd.getpwuid(os.geteuid())  # user units: only this user's own
    dirs = [(service.SYSTEM, root / service.SYSTEM_DIR),
            (service.USER, root / me.pw_dir.lstrip("/") / service.USER_DIR)]
    for kind, unit_dir in dirs:
        for dropin in sorted(unit_dir.glob(f"devloop@*.service.d/{service.DROPIN}")):
            if installed.mark_version(dropin) is None:
                continue
            text = dropin.read_text(encoding="utf-8")
            name = dropin.parent.name.removeprefix("devloop@").removesuffix(".service.d")
            project = _setting(text, r"^Environment=DEVLOOP_PROJECT_DIR=(.*)$")
            user = me.pw_name if kind == service.USER else _setting(text, r"^User=(.*)$")
            if project and user:
                found.append(service.make(kind, name, Path(project), user, exe, root))
    for conf in sorted((root / service.SUPERVISOR_DIR).glob("devloop-*.conf")):
        if installed.mark_version(conf) is None:
            continue
        text = conf.read_text(encoding="utf-8")
        project, user = _setting(text, r"^directory=(.*)$"), _setting(text, r"^user=(.*)$")
        name = conf.name.removeprefix("devloop-").removesuffix(".conf")
        if project and user:
            found.append(service.make(service.SUPERVISOR, name, Path(project), user, exe,
                                      root))
    return found


def run(args: argparse.Namespace) -> int:
    project = project_root(args.dir)
    root = args.root or Path("/")
    exe = service.devloop_executable()
    changes: list[installed.Change] = []
    hook = hooks.hook_path(project)
    if hook is None:
        print(f"no git repository at {project}: no pre-commit hook")
    else:
        changes.append(installed.put(hook, hooks.hook_text(project, exe), mode=0o755,
                                     dry_run=args.dry_run))
    seen: set[Path] = set()
    for inst in _instances(root, exe):
        for path, text in service.files(inst):
            if path in seen:
                continue
            seen.add(path)
            try:
                changes.append(installed.put(path, text, owner=inst.owner,
                                             dry_run=args.dry_run))
            except DevloopError as exc:  # one unwritable file must not hide the others
                print(f"error      {path}: {exc.message}")
    for change in changes:
        print(change)
    units = [c for c in changes if c.action in ("updated", "created")
             and c.path.suffix in (".service", ".conf") and "systemd" in c.path.parts]
    if units:
        print("then run: systemctl daemon-reload (systemctl --user daemon-reload for user "
              "units), and restart the instances to use the new files")
    return EX_OK
