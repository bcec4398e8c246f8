"""`devloop metrics DIR...`: Prometheus text from the heartbeats, printed or served."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from prometheus_client import start_http_server

from devloop import metrics
from devloop.commands import Subparsers
from devloop.errors import EX_OK, EX_OSERR, EX_USAGE, DevloopError


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "metrics",
        help="Prometheus metrics from the daemons' heartbeats (print, or serve over HTTP)",
        description="Print the Prometheus exposition text for each DIR, built from its "
        "heartbeat; every sample is labelled project=DIR. With --listen HOST:PORT, serve the "
        "same on http://HOST:PORT/metrics (read at every scrape, several scrapes at once) "
        "until SIGTERM or Ctrl-C. A DIR that does not exist, or whose heartbeat is corrupt, "
        "is reported down (devloop_up 0), never an error for the others.",
    )
    p.add_argument("dirs", nargs="*", default=["."], metavar="DIR",
                   help="project directories (default: the current directory)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="serve over HTTP, e.g. 127.0.0.1:9101 (port 0: any free port)")
    p.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9101', '[::1]:9101' or ':9101' (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise DevloopError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9101",
                           EX_USAGE)
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EX_OK)


def serve(listen: str, projects: list[Path]) -> int:
    """prometheus_client's threading server: an idle or slow client holds one thread only."""
    host, port = parse_listen(listen)
    registry = metrics.registry_for(metrics.ProjectsCollector(projects))
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as exc:
        raise DevloopError(f"cannot listen on {listen}: {exc.strerror or exc}",
                           EX_OSERR) from None
    signal.signal(signal.SIGTERM, _stop)
    shown = f"[{host}]" if ":" in host else host
    print(f"devloop: serving metrics of {len(projects)} projects on "
          f"http://{shown}:{server.server_port}/metrics", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()  # until SIGTERM or Ctrl-C
    finally:
        server.shutdown()
        server.server_close()
    return EX_OK


def run(args: argparse.Namespace) -> int:
    projects = [Path(os.path.abspath(d)) for d in args.dirs]  # a missing one is just down
    if args.listen:
        return serve(args.listen, projects)
    sys.stdout.write(metrics.exposition(projects))
    return EX_OK
