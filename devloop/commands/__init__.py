"""One module per subcommand: `add_parser(subparsers)` and `run(args) -> exit code`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from devloop.errors import EX_NOINPUT, DevloopError

Subparsers = Any  # argparse's _SubParsersAction is private


def project_root(path: str) -> Path:
    """The project directory, resolved; a missing one is exit 66 (EX_NOINPUT)."""
    root = Path(path).resolve()
    if not root.exists():
        raise DevloopError(f"no such directory: {path}", EX_NOINPUT)
    if not root.is_dir():
        raise DevloopError(f"not a directory: {path}", EX_NOINPUT)
    return root


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR",
                        help="the project directory (default: the current directory)")
