"""The watcher inside a real daemon: the watch limit, ignore-rule reloads, stopping early."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from daemon_proc import DaemonProc, inotify_watches, ran_files, record_check, wait_for

from devloop.core.daemon_health import check_daemon_health

Start = Callable[..., DaemonProc]


def config(root: Path, body: str) -> None:
    (root / "devloop.toml").write_text("heartbeat_interval = 1\n" + body)


def watch_limit(limit: int) -> list[str]:
    """A user namespace with its own, lower watch limit: the host's limit is left alone."""
    return ["unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$@"', "sh"]


def set_watch_limit(pid: int, limit: int) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-U", "sh", "-c",
                    f"echo {limit} > /proc/sys/user/max_inotify_watches"], check=True)


def edit_and_wait(root: Path, log: Path, rels: list[str], text: str) -> None:
    for rel in rels:
        (root / rel).write_text(text)
    wait_for(lambda: set(rels) <= ran_files(log), what=f"runs of {rels}")


def test_rescan_at_the_watch_limit_keeps_the_watches_it_has(project: Path, tmp_path: Path,
                                                            start_daemon: Start) -> None:
    log = tmp_path / "runs.jsonl"
    config(project, "[checks.all]\n" + record_check(log, ["*.txt"]))
    watched = [f"w{i}" for i in range(10)]
    for name in watched:
        (project / name).mkdir()
        (project / name / "a.txt").write_text("0")
    limit = 1 + len(watched) + 2  # the root, w0..w9, and two of the ten new directories
    d = start_daemon(project, prefix=watch_limit(limit))
    new = [f"n{i}" for i in range(10)]
    for name in new:
        (project / name).mkdir()
    wait_for(lambda: "watch limit" in check_daemon_health(project)["message"],
             what="watch limit reported")
    # a .gitignore change reloads the rules: a rescan of the whole tree, at the limit
    (project / ".gitignore").write_text("*.log\n")
    wait_for(lambda: "configuration reloaded" in d.log, what="reload")
    edit_and_wait(project, log, ["sync.txt"], "x")  # everything the rescan found has run
    assert not {f"{w}/a.txt" for w in watched} & ran_files(log)  # nothing there changed
    assert inotify_watches(d.pid) == limit
    edit_and_wait(project, log, [f"{w}/a.txt" for w in watched], "edited")
    assert check_daemon_health(project)["status"] == "UNHEALTHY"
    # watches to spare: the retry watches the rest, and only then is it healthy
    set_watch_limit(d.pid, 100)
    wait_for(lambda: check_daemon_health(project)["status"] == "HEALTHY", what="healthy")
    assert inotify_watches(d.pid) == 1 + len(watched) + len(new)
    log.unlink()
    edit_and_wait(project, log, [f"{n}/b.txt" for n in new] + [f"{w}/a.txt" for w in watched],
                  "again")
    assert d.proc.poll() is None
