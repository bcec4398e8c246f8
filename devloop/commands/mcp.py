"""`devloop mcp DIR`: a Model Context Protocol server over stdio for coding assistants.

The MCP SDK is the optional extra `mcp` (`pip install '.[mcp]'` in DevLoop's checkout);
it is imported only when this command runs, so neither the daemon nor the other commands
load it.
"""

from __future__ import annotations

import argparse

from devloop.commands import Subparsers, add_dir_argument, project_root
from devloop.errors import EX_OK, EX_UNAVAILABLE, DevloopError


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mcp",
        help="serve the results to coding assistants (Model Context Protocol, stdio)",
        description="Serve DIR's check results as MCP tools over stdin/stdout: status, "
        "wait_until_fresh, findings_for and run. Add it to an assistant with e.g. "
        "`claude mcp add devloop -- devloop mcp /path/to/project`. Needs the optional "
        "extra mcp: pip install '.[mcp]' in DevLoop's checkout (exit 69 without it).",
    )
    add_dir_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = project_root(args.dir)
    try:
        from devloop import mcp_server
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("mcp", "mcp_types", "pydantic",
                                                               "anyio"):
            raise
        raise DevloopError(f"devloop mcp needs the MCP SDK ({exc.name} is missing): "
                           "install DevLoop with its extra: pip install '.[mcp]' in its checkout",
                           EX_UNAVAILABLE) from None
    mcp_server.serve(root)
    return EX_OK
