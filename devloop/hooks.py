"""The project's git pre-commit hook: the checks on the staged files block a bad commit."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from devloop import installed

HOOK = """#!/bin/sh
{header}# Runs the devloop checks that the staged files trigger, on the staged content (a
# checkout of the index; the daemon's stored result is used where the working tree holds
# exactly what is staged); a failing check blocks the commit. Skip it once with:
# git commit --no-verify
DEVLOOP=${{DEVLOOP:-{exe}}}
command -v "${{DEVLOOP%% *}}" >/dev/null || {{ echo "devloop: ${{DEVLOOP%% *}} is missing: \
reinstall devloop and run 'devloop update-hooks', or delete $0" >&2; exit 1; }}
case ${{GIT_INDEX_FILE:-/}} in  # git may name it relative to the top: still valid after cd
    /*) ;;
    *) GIT_INDEX_FILE="$PWD/$GIT_INDEX_FILE"; export GIT_INDEX_FILE;;
esac
cd {subdir} || exit 1
$DEVLOOP run . --staged --reuse-fresh && exit 0
echo "devloop: a check failed on the staged files: commit blocked (--no-verify skips)" >&2
exit 1
"""


def _git(project: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True,
                           timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def hook_paths(project: Path) -> tuple[Path, Path] | None:
    """(the repository's own .git/hooks/pre-commit, the one git runs); None: not a repo.

    They differ when core.hooksPath is set: update-hooks then writes nothing (the hooks
    directory may be anywhere, and root must not write there).
    """
    out = _git(project, "rev-parse", "--path-format=absolute", "--git-common-dir",
               "--git-path", "hooks/pre-commit")
    if out is None or len(out.splitlines()) != 2:
        return None
    common, used = out.splitlines()
    return Path(common) / "hooks" / "pre-commit", Path(used)


def hook_text(project: Path, command: list[str]) -> str:
    top = _git(project, "rev-parse", "--show-toplevel") or str(project)
    sub = project.resolve().relative_to(Path(top).resolve()).as_posix()
    return HOOK.format(
        header=installed.header(), exe=shlex.quote(shlex.join(command)),
        subdir='"$(git rev-parse --show-toplevel)"' + (f"/{shlex.quote(sub)}" if sub != "."
                                                       else ""))
