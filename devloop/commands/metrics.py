"""`devloop metrics DIR...`: Prometheus text from the heartbeats, printed or served."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from devloop import metrics
from devloop.commands import Subparsers, project_root
from devloop.errors import EX_OK, EX_OSERR, EX_USAGE, DevloopError


def add_parser(sub: Subparsers) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "metrics",
        help="Prometheus metrics from the daemons' heartbeats (print, or serve over HTTP)",
        description="Print the Prometheus exposition text for each DIR, built from its "
        "heartbeat; every sample is labelled project=DIR. With --listen HOST:PORT, serve the "
        "same on http://HOST:PORT/metrics (read at every scrape) until SIGTERM or Ctrl-C.",
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


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # a client that stops talking cannot hold the single-threaded server

    def log_message(self, format: str, *args: object) -> None:
        """No access log: Prometheus scrapes every few seconds."""


class _Server(WSGIServer):
    address_family = socket.AF_INET


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EX_OK)


def serve(listen: str, projects: list[Path]) -> int:
    host, port = parse_listen(listen)
    app = make_wsgi_app(metrics.registry_for(metrics.ProjectsCollector(projects)))
    try:
        server = make_server(host, port, app, server_class=_Server6 if ":" in host else _Server,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise DevloopError(f"cannot listen on {listen}: {exc.strerror}", EX_OSERR) from None
    signal.signal(signal.SIGTERM, _stop)
    shown = f"[{host}]" if ":" in host else host
    print(f"devloop: serving metrics of {len(projects)} projects on "
          f"http://{shown}:{server.server_port}/metrics", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return EX_OK


def run(args: argparse.Namespace) -> int:
    projects = [project_root(d) for d in args.dirs]
    if args.listen:
        return serve(args.listen, projects)
    sys.stdout.write(metrics.exposition(projects))
    return EX_OK
