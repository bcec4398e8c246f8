"""Argument parsing and exit codes; each subcommand lives in devloop/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from devloop import __version__
from devloop.errors import EX_USAGE, DevloopError
from devloop.systemd import stderr_is_journal

# subcommand -> module in devloop/commands/
COMMANDS = {
    "init": "init",
    "watch": "watch",
    "status": "status",
    "run": "run",
    "daemon-status": "daemon_status",
    "stop": "stop",
    "metrics": "metrics",
    "service": "service",
    "update-hooks": "update_hooks",
    "mcp": "mcp",
}

EPILOG = """\
exit codes: 0 ok; 1 a check failed (run, status) or the daemon is unhealthy (daemon-status);
64 usage; 65 a value no service file can hold (service, update-hooks);
66 no such project directory, or it went away; 67 no such user (service);
69 no daemon watches the project (status --wait), or the optional extra is missing (mcp);
70 the detached daemon died before it was ready; 71 inotify watch limit reached;
73 .devloop/ cannot be created; 75 another daemon already watches the project (or stop
timed out); 78 bad config.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported.

    The daemon is one of those processes: it should not carry the HTTP server, the
    Prometheus client and the installer in memory for months.
    """
    # imported before argparse runs: it imports shutil, which `watch` imports in its own way
    modules = [importlib.import_module(f"devloop.commands.{module}")
               for name, module in COMMANDS.items() if only is None or name == only]
    parser = _Parser(
        prog="devloop",
        description="Watch a project and run its checks the moment a file changes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"devloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for module in modules:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(first if first in COMMANDS else None).parse_args(argv)
    try:
        code: int = args.func(args)
    except DevloopError as exc:
        prefix = "<3>" if stderr_is_journal() else ""  # journald: priority err
        print(f"{prefix}devloop: error: {exc.message}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `devloop status --json | head`: the reader has what it wanted
        # stdout's buffer would be flushed again at exit, into the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command killed by SIGPIPE
    return code
