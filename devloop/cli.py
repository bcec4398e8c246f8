"""Argument parsing and exit codes; each subcommand lives in devloop/commands/<name>.py."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
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

# Per command: modules its process never uses, which the stdlib and pathspec import only if
# they can; unimportable while the command's modules are imported. The daemon speaks no TLS
# (asyncio's ssl), hashes with blake2b and sha256, which Python has built in (hashlib's
# OpenSSL, _hashlib), makes no archives (shutil's bz2, lzma, zlib), and pathspec has
# fallbacks for typing_extensions. Without them it maps neither libssl nor libcrypto: an
# idle daemon's VmRSS 31,100 -> 24,800 kB, ssl alone 1,300 kB, zlib 200 kB
# (bench/daemon_rss.sh). What does need one later still gets it (prometheus_client imports
# ssl and zlib, when a reload sets metrics_textfile).
KEEP_OUT = {"watch": ("ssl", "_ssl", "_hashlib", "bz2", "lzma", "zlib", "typing_extensions")}

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
    parser = _Parser(
        prog="devloop",
        description="Watch a project and run its checks the moment a file changes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"devloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"devloop.commands.{module}").add_parser(sub)
    return parser


@contextlib.contextmanager
def _unimportable(names: Iterable[str]) -> Iterator[None]:
    """Within: an `import` of one of names (not yet imported) fails with ImportError."""
    added = [name for name in names if name not in sys.modules]
    for name in added:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in added:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    only = first if first in COMMANDS else None
    with _unimportable(KEEP_OUT.get(only or "", ())):  # the parser too: argparse imports shutil
        parser = build_parser(only)
    args = parser.parse_args(argv)
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
