"""`devloop service install|uninstall NAME`: run a project under systemd or supervisord."""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
from pathlib import Path

from devloop import installed, service
from devloop.commands import Subparsers, project_root
from devloop.errors import EX_CANTCREAT, EX_NOUSER, EX_OK, EX_TEMPFAIL, DevloopError


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "service",
        help="install or remove a systemd (or supervisord) service for a project",
        description="install: write the unit template (if missing or outdated) and the "
        "instance's drop-in (user, project directory, this devloop's absolute path), then "
        "print the systemctl commands (--now runs them). uninstall: undo exactly that. "
        "Only files marked 'installed by devloop' are ever overwritten or removed.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("install", "uninstall"):
        a = actions.add_parser(action, help=f"{action} the service of one project")
        a.add_argument("name", metavar="NAME", help="instance name: devloop@NAME.service, "
                       "or program devloop-NAME with --supervisor")
        if action == "install":
            a.add_argument("--dir", default=".", help="the project (default: the current "
                           "directory)")
            a.add_argument("--executable", metavar="PATH", help="the devloop to run "
                           "(default: this one)")
            a.add_argument("--allow-root", action="store_true", help="let the daemon run "
                           "as root (refused otherwise, e.g. for a project root owns)")
        a.add_argument("--user", help="the user the daemon runs as (default: the owner of "
                       "--dir; uninstall: you)")
        kind = a.add_mutually_exclusive_group()
        kind.add_argument("--user-unit", action="store_true", help="a systemd --user unit "
                          "in ~USER/.config/systemd/user instead of a system unit")
        kind.add_argument("--supervisor", action="store_true", help="a supervisord program "
                          "in /etc/supervisor/conf.d instead of a systemd unit")
        a.add_argument("--now", action="store_true", help="also run the systemctl or "
                       "supervisorctl commands")
        a.add_argument("--print", action="store_true", dest="dry_run",
                       help="show the files and commands; change nothing")
        a.add_argument("--root", type=Path, help="write under this directory instead of / "
                       "(tests)")
        a.set_defaults(func=run)


def _kind(args: argparse.Namespace) -> str:
    return service.USER if args.user_unit else service.SUPERVISOR if args.supervisor \
        else service.SYSTEM


def _run_commands(cmds: list[list[str]]) -> None:
    for cmd in cmds:
        print(f"$ {service.shell(cmd)}", flush=True)
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DevloopError(f"{service.shell(cmd)}: {exc}", EX_TEMPFAIL) from None
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["no message"])[-1]
            raise DevloopError(f"{service.shell(cmd)} failed (exit {r.returncode}): {why}",
                               EX_TEMPFAIL)


def _show(cmds: list[list[str]], heading: str) -> None:
    if cmds:
        print(heading)
        for cmd in cmds:
            print(f"  {service.shell(cmd)}")


def _owner_name(project: Path) -> str:
    uid = project.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise DevloopError(f"{project} belongs to uid {uid}, which has no user name: "
                           "name the daemon's user with --user", EX_NOUSER) from None


def install(args: argparse.Namespace) -> int:
    project = project_root(args.dir)
    user = args.user or _owner_name(project)
    inst = service.make(_kind(args), args.name, project, user,
                        [args.executable] if args.executable else None, args.root,
                        allow_root=args.allow_root)
    owner = project.stat().st_uid
    if owner not in (0, inst.account.pw_uid):
        print(f"devloop: warning: {project} belongs to uid {owner}, not {user}: whoever "
              f"edits its devloop.toml runs commands as {user}", file=sys.stderr)
    files = service.files(inst)  # every value checked before anything is written
    blocked = False
    for i, change in enumerate(installed.put_all(inst.writer, files, dry_run=args.dry_run)):
        print(change)  # an admin's own template or slice may stay; the instance's own file
        blocked |= change.action == installed.FOREIGN and i == len(files) - 1
        if args.dry_run:
            print(f"---- {change.path}\n{files[i][1]}----")
    if blocked:
        raise DevloopError("the instance's own file was not written by devloop: move it "
                           "away or edit it yourself", EX_CANTCREAT)
    cmds = service.install_commands(inst)
    if args.now and not args.dry_run:
        _run_commands(cmds)
    else:
        _show(cmds, "then run:")
    print(f"health: devloop daemon-status {service.shell([str(project)])}")
    return EX_OK


def _remove(inst: service.Instance, loaded: list[str], *,
            dry_run: bool) -> list[installed.Change]:
    """Remove the instance's files (as their owner: see installed.run_as); the template
    only when nothing else uses it, and the slice only with the template."""
    def remove() -> list[list[str]]:
        if inst.kind == service.SUPERVISOR:
            return [installed.remove(inst.supervisor_path, dry_run=dry_run).as_list()]
        out = [installed.remove(inst.dropin_path, dry_run=dry_run).as_list()]
        users = service.template_users(inst) + loaded
        if users:
            kept = installed.Change("kept", inst.template_path, f"still used: {', '.join(users)}")
        else:
            kept = installed.remove(inst.template_path, dry_run=dry_run)
        out.append(kept.as_list())
        if inst.slice_path is None:
            return out
        if kept.action in ("removed", "would be removed", "absent"):
            out.append(installed.remove(inst.slice_path, dry_run=dry_run).as_list())
        elif inst.slice_path.exists():
            out.append(installed.Change("kept", inst.slice_path,
                                        f"{inst.template_path.name} stays").as_list())
        return out
    return [installed.Change.from_list(c) for c in installed.run_as(inst.writer, remove)]


def uninstall(args: argparse.Namespace) -> int:
    user = args.user or pwd.getpwuid(os.geteuid()).pw_name
    inst = service.make(_kind(args), args.name, Path("/"), user, None, args.root,
                        allow_root=True)
    before, after = service.uninstall_commands(inst)
    if inst.kind != service.SUPERVISOR and not args.now and \
            installed.run_as(inst.writer, inst.wants_link.is_symlink):
        raise DevloopError(f"{inst.unit} is enabled: run '{service.shell(before[0])}' first, "
                           "or add --now", EX_TEMPFAIL)
    if args.now and not args.dry_run:
        _run_commands(before)
    loaded = service.loaded_instances(inst) if inst.kind != service.SUPERVISOR else []
    for change in _remove(inst, loaded, dry_run=args.dry_run):
        print(change)
    if args.now and not args.dry_run:
        _run_commands(after)
    elif inst.kind == service.SUPERVISOR:
        _show(after, "then run:")
    else:  # not enabled, but it may still run: stop works on the loaded unit
        _show([[*before[0][:-3], "stop", inst.unit], *after], "then run:")
    return EX_OK


def run(args: argparse.Namespace) -> int:
    return install(args) if args.action == "install" else uninstall(args)
