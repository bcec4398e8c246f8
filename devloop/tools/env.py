"""The environment every check runs in: the project's venv first, tool state out of the tree.

Tool caches go to one directory outside the project's files: systemd's
`CacheDirectory=` under the unit (`$CACHE_DIRECTORY`), else `.devloop/cache/`.
A variable already set (by the unit, or by the person who started the daemon)
is kept: it was somebody's choice.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path

from devloop.core.daemon_health import STATE_DIR

# Set for the daemon by its service manager: not the check's business.
SCRUBBED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")
VENVS = (".venv", "venv")

# variable -> the subdirectory of the cache directory it points at
CACHE_VARS = {
    "PYTHONPYCACHEPREFIX": "pycache",  # __pycache__ of the project's modules and tests
    "MYPY_CACHE_DIR": "mypy",
    "RUFF_CACHE_DIR": "ruff",
    "TESTMON_DATAFILE": "testmon/testmondata",  # pytest-testmon's .testmondata
    "HYPOTHESIS_STORAGE_DIRECTORY": "hypothesis",  # read by recent hypothesis (6.170 is)
}

# `-o cache_dir=` names an option of pytest's cache plugin: with the plugin off
# (`-p no:cacheprovider`, so no .pytest_cache either) pytest warns that the option is
# unknown, and a project with `filterwarnings = error` would fail on that warning.
UNKNOWN_INI_OK = "ignore:Unknown config option:pytest.PytestConfigWarning"


def cache_dir(root: Path, environ: Mapping[str, str]) -> Path:
    """Where this project's tool state goes (created 0700 on first use)."""
    given = environ.get("CACHE_DIRECTORY", "").split(":")[0]  # systemd: colon-separated
    path = Path(given) if os.path.isabs(given) else root / STATE_DIR / "cache"
    try:  # one syscall when it is there already: every run of every check comes here
        st = os.lstat(path)
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise OSError(errno.EPERM, f"{path} is not a directory of ours (a symlink?): "
                      "refusing to use it")
    return path


def project_venv(root: Path) -> Path | None:
    """The project's own virtual environment, `.venv` or `venv`, if it has one."""
    for name in VENVS:  # joined as strings: pathlib costs more than the stat() calls
        venv = f"{root}/{name}"
        if os.path.isfile(f"{venv}/pyvenv.cfg") and os.path.isdir(f"{venv}/bin"):
            return Path(venv)
    return None


def environment(root: Path, environ: Mapping[str, str], cache: Path) -> dict[str, str]:
    """What a check sees: ours minus the service manager's, plus the venv and the caches."""
    env = {k: v for k, v in environ.items()
           if k not in SCRUBBED and not k.startswith("LISTEN_")}
    venv = project_venv(root)
    if venv is not None:
        env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", os.defpath)])
        env["VIRTUAL_ENV"] = str(venv)
        env.pop("PYTHONHOME", None)
    for var, sub in CACHE_VARS.items():
        env.setdefault(var, f"{cache}/{sub}")
    # Bytecode goes to the cache (PYTHONPYCACHEPREFIX), never into the project, so writing
    # it is harmless; forbidding it (the unit's PYTHONDONTWRITEBYTECODE=1) made every Python
    # check recompile what it imports from source: 0.4-0.6 s more per dmypy client start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    addopts = env.get("PYTEST_ADDOPTS", "")
    extra = []
    if "cache_dir=" not in addopts:
        extra += ["-o", shlex.quote(f"cache_dir={cache / 'pytest'}")]
    if UNKNOWN_INI_OK not in addopts:
        extra += ["-W", shlex.quote(UNKNOWN_INI_OK)]
    if extra:
        env["PYTEST_ADDOPTS"] = " ".join(filter(None, [addopts, *extra]))
    return env
