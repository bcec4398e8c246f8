"""Argument parsing and exit codes; each subcommand lives in devloop/commands/<name>.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from devloop import __version__
from devloop.commands import (
    daemon_status,
    init,
    metrics,
    run,
    service,
    status,
    stop,
    update_hooks,
    watch,
)
from devloop.errors import EX_USAGE, DevloopError
from devloop.systemd import stderr_is_journal

EPILOG = """\
exit codes: 0 ok; 1 a check failed (run, status) or the daemon is unhealthy (daemon-status);
64 usage; 66 no such project directory, or it went away; 71 inotify watch limit reached;
73 .devloop/ cannot be created; 75 another daemon already watches the project; 78 bad config.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="devloop",
        description="Watch a project and run its checks the moment a file changes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"devloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for module in (init, watch, status, run, daemon_status, stop, metrics, service,
                   update_hooks):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except DevloopError as exc:
        prefix = "<3>" if stderr_is_journal() else ""  # journald: priority err
        print(f"{prefix}devloop: error: {exc.message}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code
