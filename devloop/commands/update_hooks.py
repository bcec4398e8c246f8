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

from devloop import hooks, installed, service, unitsafe
from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.errors import EX_NOUSER, EX_OK, DevloopError


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
    p.add_argument("--root", type=Path, help="look under this directory instead of / (tests)")
    p.set_defaults(func=run)


def _setting(text: str, pattern: str) -> str | None:
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1) if m else None


def _scan(root: Path, command: list[str]) -> tuple[list[service.Instance | DevloopError],
                                                   list[tuple[Path, str]],
                                                   list[installed.Change]]:
    """The instances devloop installed, rebuilt from the files it wrote for them; the
    templates it wrote (with the system template's slice); and every instance file it
    leaves alone."""
    found: list[service.Instance | DevloopError] = []
    templates: list[tuple[Path, str]] = []
    alone: list[installed.Change] = []
    me = pwd.getpwuid(os.geteuid())  # user units: only this user's own
    dirs = [(service.SYSTEM, root / service.SYSTEM_DIR),
            (service.USER, root / me.pw_dir.lstrip("/") / service.USER_DIR)]
    for kind, unit_dir in dirs:
        template = unit_dir / "devloop@.service"
        if installed.mark_version(template) is not None:
            templates.append((template, service.template_text(kind)))
            if kind == service.SYSTEM:  # the template runs its instances in the slice
                templates.append((unit_dir / "devloop.slice", service.slice_text()))
        for dropin in sorted(unit_dir.glob(f"devloop@?*.service.d/{service.DROPIN}")):
            if installed.mark_version(dropin) is None:
                alone.append(installed.left_alone(dropin))
                continue
            text = installed.read_text(dropin)
            name = dropin.parent.name.removeprefix("devloop@").removesuffix(".service.d")
            env = _setting(text, r"^Environment=(.*)$")
            try:
                project = unitsafe.systemd_unquote(env).removeprefix("DEVLOOP_PROJECT_DIR=") \
                    if env else None
            except DevloopError as exc:
                found.append(DevloopError(f"{dropin}: {exc.message}", exc.code))
                continue
            user = me.pw_name if kind == service.USER else _setting(text, r"^User=(.*)$")
            if project and user:
                found.append(_make(dropin, kind, name, project, user, command, root))
    for conf in sorted((root / service.SUPERVISOR_DIR).glob("devloop-*.conf")):
        if installed.mark_version(conf) is None:
            alone.append(installed.left_alone(conf))
            continue
        text = installed.read_text(conf)
        project, user = _setting(text, r"^directory=(.*)$"), _setting(text, r"^user=(.*)$")
        name = conf.name.removeprefix("devloop-").removesuffix(".conf")
        if project and user:
            found.append(_make(conf, service.SUPERVISOR, name,
                               unitsafe.supervisor_unquote(project), user, command, root))
    return found, templates, alone


def _make(path: Path, kind: str, name: str, project: str, user: str, command: list[str],
          root: Path) -> service.Instance | DevloopError:
    """The instance `path` was written for, or why its values are refused now."""
    try:
        return service.make(kind, name, Path(project), user, command, root, allow_root=True)
    except DevloopError as exc:
        return DevloopError(f"{path}: {exc.message}", exc.code)


def _hook(project: Path, command: list[str], dry_run: bool) -> list[list[str]]:
    """The pre-commit hook, in the repository's own .git/hooks only (run as its owner)."""
    paths = hooks.hook_paths(project)
    if paths is None:
        return [installed.Change("skipped", project, "no git repository: no pre-commit "
                                 "hook").as_list()]
    own, used = paths
    if own.resolve() != used.resolve():
        return [installed.Change(installed.FOREIGN, used, f"core.hooksPath: git runs hooks "
                                 f"from there, not {own.parent}; not writing outside the "
                                 "repository: call the devloop hook from yours").as_list()]
    return [installed.put(own, hooks.hook_text(project, command), mode=0o755,
                          dry_run=dry_run).as_list()]


def _owner(path: Path) -> pwd.struct_passwd | None:
    """Who writes the hook: root acts as the repository's owner (None: not root)."""
    if os.geteuid() != 0:
        return None
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        raise DevloopError(f"{path} belongs to uid {uid}, which has no user name: not "
                           "writing its hook", EX_NOUSER) from None


def run(args: argparse.Namespace) -> int:
    project = project_root(args.dir)
    root = args.root or Path("/")
    command = service.devloop_executable()
    failed = EX_OK
    changes: list[installed.Change] = []
    try:
        changes += [installed.Change.from_list(c) for c in installed.run_as(
            _owner(project), lambda: _hook(project, command, args.dry_run))]
    except DevloopError as exc:  # the units are still refreshed
        print(f"error      {exc.message}")
        failed = exc.code
    instances, templates, alone = _scan(root, command)
    files = dict(templates)
    writers: dict[Path, service.Instance] = {}
    for inst in instances:
        if isinstance(inst, DevloopError):
            print(f"error      {inst.message}")
            failed = failed or inst.code
            continue
        try:
            for path, text in service.files(inst):
                files.setdefault(path, text)
                writers.setdefault(path, inst)
        except DevloopError as exc:  # one bad instance must not hide the others
            print(f"error      {inst.unit if inst.kind != service.SUPERVISOR else inst.program}"
                  f": {exc.message}")
            failed = failed or exc.code
    for path, text in files.items():
        writer = writers[path].writer if path in writers else None
        try:
            changes += installed.put_all(writer, [(path, text)], dry_run=args.dry_run)
        except DevloopError as exc:
            print(f"error      {path}: {exc.message}")
            failed = failed or exc.code
    for change in changes + alone:
        print(change)
    units = [c for c in changes if c.action in ("updated", "created")
             and c.path.suffix in (".service", ".slice", ".conf") and "systemd" in c.path.parts]
    if units:
        print("then run: systemctl daemon-reload (systemctl --user daemon-reload for user "
              "units), and restart the instances to use the new files")
    return failed
