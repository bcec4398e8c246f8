"""Where the shipped unit templates, slice and supervisor program are, installed or in a checkout.

They live at the top of the repository (units/, packaging/) and a wheel installs them
under <prefix>/share/devloop/ (pyproject's data-files), so no copy is ever kept in sync
by hand.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

from devloop.errors import EX_SOFTWARE, DevloopError

SYSTEM_UNIT = "units/devloop@.service"
USER_UNIT = "units/user/devloop@.service"
SLICE_UNIT = "units/devloop.slice"  # system instances only: see docs/systemd.md
SUPERVISOR_PROGRAM = "packaging/supervisor/devloop.conf"


def _roots() -> list[Path]:
    checkout = Path(__file__).resolve().parents[1]  # an editable install: the repo itself
    roots = [checkout] if (checkout / "pyproject.toml").is_file() else []
    share = [sysconfig.get_path("data"), sys.prefix, site.getuserbase()]
    return roots + [Path(p) / "share" / "devloop" for p in share]


def read(rel: str) -> str:
    """The text of a shipped data file, e.g. read(SYSTEM_UNIT)."""
    for root in _roots():
        path = root / rel
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise DevloopError(f"{rel} is not installed with devloop (looked in "
                       f"{', '.join(str(r) for r in _roots())})", EX_SOFTWARE)
