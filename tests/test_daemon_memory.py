"""What a real daemon process maps: not the libraries it never uses (OpenSSL, compression).

devloop/commands/watch.py keeps them out (NOT_IN_DAEMON); the figures are in
bench/daemon_rss.sh. These read /proc/PID/maps of a running `devloop watch`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from daemon_proc import DaemonProc, status_json, wait_for
from ops_helpers import background, lock_pid

Start = Callable[..., DaemonProc]
# (liblzma itself may come with libsystemd under the journal: its Python module may not)
UNUSED_LIBRARIES = ("libssl.so", "libcrypto.so", "_ssl.", "_hashlib.", "_lzma.", "_bz2.",
                    "/zlib.")
SYNTAX_CHECK = (
    "[checks.syntax]\n"
    f'command = ["{sys.executable}", "-m", "devloop.tools.pysyntax", "{{files}}"]\n'
    'patterns = ["*.py"]\ndebounce_ms = 0\n'
)


def mapped(pid: int) -> set[str]:
    """The files the process has mapped."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {fields[5] for fields in (line.split(maxsplit=5) for line in lines)
            if len(fields) == 6}


def unused_mapped(pid: int) -> list[str]:
    files = mapped(pid)
    assert any("_sqlite3" in f for f in files)  # we read the daemon's own maps
    return sorted(f for f in files if any(lib in f for lib in UNUSED_LIBRARIES))


def test_foreground_daemon_maps_no_openssl(project: Path, start_daemon: Start) -> None:
    (project / "devloop.toml").write_text(SYNTAX_CHECK)
    d = start_daemon(project)
    (project / "a.py").write_text("x = (\n")  # a run: hashing, a finding, the database
    wait_for(lambda: [c for c in status_json(project) if c["findings"]], what="a finding")
    assert unused_mapped(d.pid) == []


def test_daemon_logging_to_the_journal_maps_no_openssl(project: Path,
                                                       start_daemon: Start) -> None:
    """systemd.journal is imported after the others, with nothing kept out any more."""
    (project / "devloop.toml").write_text(SYNTAX_CHECK)
    as_if_journal = [sys.executable, "-c", "import os, sys; st = os.fstat(2); "
                     "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'; "
                     "os.execv(sys.argv[1], sys.argv[1:])"]
    d = start_daemon(project, prefix=as_if_journal)
    assert any("systemd/_journal" in f for f in mapped(d.pid))
    assert unused_mapped(d.pid) == []


def test_detached_daemon_maps_no_openssl(project: Path) -> None:
    (project / "devloop.toml").write_text(SYNTAX_CHECK)
    with background(project) as r:
        assert r.returncode == 0, r.stderr
        pid = lock_pid(project)
        assert pid is not None
        assert unused_mapped(pid) == []


def test_metrics_enabled_by_a_reload_still_load_prometheus(project: Path, tmp_path: Path,
                                                            start_daemon: Start) -> None:
    """prometheus_client imports ssl: kept out at start, it is importable when needed."""
    (project / "devloop.toml").write_text(SYNTAX_CHECK)
    d = start_daemon(project)
    assert unused_mapped(d.pid) == []
    prom = tmp_path / "devloop.prom"
    (project / "devloop.toml").write_text(f'metrics_textfile = "{prom}"\n' + SYNTAX_CHECK)
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: prom.exists() and "devloop_up 1" in prom.read_text(),
             what="the metrics textfile")
    assert d.proc.poll() is None


def test_only_the_watch_process_keeps_them_out() -> None:
    """Importing the watch command (as `devloop --help` does) leaves asyncio its ssl and
    hashlib its OpenSSL (sha512_256 is OpenSSL's only)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import devloop.cli; devloop.cli.build_parser(); "
         "import asyncio.base_events, hashlib; print(asyncio.base_events.ssl is not None, "
         "'sha512_256' in hashlib.algorithms_available)"],
        capture_output=True, text=True, check=True, timeout=60)
    assert probe.stdout.split() == ["True", "True"]
