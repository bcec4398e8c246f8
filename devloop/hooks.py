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


def hook_path(project: Path) -> Path | None:
    """Where git looks for the pre-commit hook (core.hooksPath aware); None: not a repo."""
    rel = _git(project, "rev-parse", "--git-path", "hooks/pre-commit")
    return None if rel is None else (project / rel).resolve()


def hook_text(project: Path, executable: str) -> str:
    top = _git(project, "rev-parse", "--show-toplevel") or str(project)
    sub = project.resolve().relative_to(Path(top).resolve()).as_posix()
    return HOOK.format(
        header=installed.header(), exe=shlex.quote(executable),
        subdir='"$(git rev-parse --show-toplevel)"' + (f"/{shlex.quote(sub)}" if sub != "."
                                                       else ""))
