#!/usr/bin/env python3
"""DevLoop benchmark suite: DevLoop against inotifywait, entr, watchmedo, watchfiles, watchman.

One command (as root, on Debian/Ubuntu):

    python3 bench/run.py            # full run, ~15 min, writes bench/RESULTS.md
    python3 bench/run.py --quick    # smoke run, ~2 min, writes bench/RESULTS-quick.md

It installs the peers it needs (apt: inotify-tools entr watchman gcc; pip: watchdog[watchmedo]
watchfiles; DevLoop itself from this repository) unless --no-install is given. Only the standard
library is used. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
QUEUE_SYSCTL = Path("/proc/sys/fs/inotify/max_queued_events")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = b"x" * 64


# --------------------------------------------------------------------------- scale


@dataclass(frozen=True)
class Scale:
    name: str
    dirs: int  # directories to watch (plus the root)
    files: int  # *.txt files spread over them
    nm_dirs: int  # directories under node_modules/ (ignored)
    nm_files: int  # files under node_modules/
    edits: int  # reaction-time samples per tool
    idle_s: float  # idle window
    storm_files: int  # files rewritten per storm
    drain_max_s: float  # longest wait for a tool to finish reacting to a storm
    quiet_s: float  # no new check run for this long = the tool is done
    small_queue: int  # fs.inotify.max_queued_events for the overflow storm


FULL = Scale("full", 10_000, 100_000, 20_000, 20_000, 200, 60.0, 50_000, 30.0, 2.5, 1024)
QUICK = Scale("quick", 100, 1_000, 200, 200, 20, 5.0, 1_000, 8.0, 1.5, 64)
# monorepo tier: only the right-after-ready pass (no idle window, no storms)
HUGE = Scale("huge", 100_000, 1_000_000, 20_000, 20_000, 20, 0.0, 0, 60.0, 2.5, 1024)
# small-project tier: only start-up and the reaction pass, 200 edits (the tail)
SMALL = Scale("small", 200, 2_000, 200, 200, 200, 0.0, 0, 8.0, 1.5, 64)
HUGE_TOOLS = ("inotifywait", "watchman", "devloop")  # the floor and the peer built for size
AFTER_READY_EDITS = 20  # edits made from READY on, in the right-after-ready pass
STALL_MS = 20  # a callback holding DevLoop's event loop longer than this is a stall
SLOW_CALLBACK_ENV = "DEVLOOP_SLOW_CALLBACK_MS"  # DevLoop's bench mode (asyncio debug)


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def sh(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- /proc


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is `sid` (tools run in their own session)."""
    out: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        data = read_text(f"/proc/{name}/stat")
        if data is None:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        if int(rest[3]) == sid:
            out.append(int(name))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads, live and exited)."""
    data = read_text(f"/proc/{pid}/stat")
    if data is None:
        return 0.0
    rest = data[data.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def wakeups(pid: int) -> int:
    """Voluntary context switches summed over every thread of a process."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        status = read_text(f"/proc/{pid}/task/{tid}/status") or ""
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def rss_kib(pid: int) -> int:
    for line in (read_text(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def inotify_watches(pid: int) -> int:
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for fd in fds:
        info = read_text(f"/proc/{pid}/fdinfo/{fd}")
        if info and "inotify wd:" in info:
            total += info.count("inotify wd:")
    return total


@dataclass
class Usage:
    cpu_s: float
    wakeups: int
    rss_mib: float
    watches: int
    procs: int


def usage(sid: int, with_watches: bool = True) -> Usage:
    pids = session_pids(sid)
    return Usage(
        cpu_s=sum(cpu_seconds(p) for p in pids),
        wakeups=sum(wakeups(p) for p in pids),
        rss_mib=sum(rss_kib(p) for p in pids) / 1024,
        watches=sum(inotify_watches(p) for p in pids) if with_watches else -1,
        procs=len(pids),
    )


# --------------------------------------------------------------------------- tree


@dataclass
class Tree:
    root: Path
    files: list[str]  # relative paths of the *.txt files, in generation order
    dirs: int  # directories that are not ignored, root included


def dir_paths(n: int, prefix: str) -> list[str]:
    """n relative directory paths, fan-out 10, breadth first (depth ~log10 n)."""
    paths = [""]
    for i in range(1, n + 1):
        parent = paths[(i - 1) // 10]
        paths.append(f"{parent}/{prefix}{i}" if parent else f"{prefix}{i}")
    return paths[1:]


def make_tree(workdir: Path, scale: Scale, recorder: Path) -> Tree:
    root = workdir / f"tree-{scale.name}"
    dirs = dir_paths(scale.dirs, "d")
    files = [f"{dirs[j % len(dirs)]}/f{j}.txt" for j in range(scale.files)]
    stamp = root.parent / f"tree-{scale.name}.stamp"
    wanted = json.dumps(asdict(scale), sort_keys=True)
    if not (stamp.exists() and stamp.read_text() == wanted and root.is_dir()):
        log(
            f"generating tree {root} ({scale.dirs} dirs, {scale.files} files, node_modules "
            f"{scale.nm_dirs} dirs)"
        )
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for d in dirs:
            (root / d).mkdir()
        for rel in files:
            (root / rel).write_bytes(PAGE)
        nm = root / "node_modules"
        nm.mkdir()
        nm_dirs = dir_paths(scale.nm_dirs, "p")
        for d in nm_dirs:
            (nm / d).mkdir()
        for j in range(scale.nm_files):
            (nm / nm_dirs[j % len(nm_dirs)] / f"index{j}.js").write_bytes(PAGE)
        stamp.write_text(wanted)
    write_tool_configs(root, recorder)
    shutil.rmtree(root / ".devloop", ignore_errors=True)
    return Tree(root=root, files=files, dirs=scale.dirs + 1)


def write_tool_configs(root: Path, recorder: Path) -> None:
    (root / ".gitignore").write_text("node_modules/\n.devloop/\n")
    (root / ".watchmanconfig").write_text(
        json.dumps({"settle": 1, "ignore_dirs": ["node_modules"]})
    )
    (root / "devloop.toml").write_text(
        'ignore = ["node_modules/"]\n'
        "heartbeat_interval = 30\n"
        "[checks.bench]\n"
        f'command = ["{recorder}", "{{files}}"]\n'
        'patterns = ["*.txt"]\n'
        "debounce_ms = 0\n"
        "run_on_start = false\n"
        "timeout_s = 300\n"
    )


# --------------------------------------------------------------------------- recorder


def build_recorder(workdir: Path) -> tuple[Path, str]:
    out = workdir / "recorder"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        res = sh([cc, "-O2", "-o", str(out), str(BENCH_DIR / "recorder.c")])
        if res.returncode == 0:
            return out, "C (bench/recorder.c, clock_gettime(CLOCK_REALTIME) as first statement)"
        log(f"cc failed: {res.stderr.strip()}")
    py = workdir / "recorder.py"
    py.write_text(
        f"#!{sys.executable} -S\n"
        "import time\nt = time.time_ns()\n"
        "import os, sys\n"
        "d = os.environ.get('BENCH_LOGDIR')\n"
        "if d:\n"
        "    p = f'{d}/{t}.{os.getpid()}'\n"
        "    lines = [f'A\\t{a}' for a in sys.argv[1:]]\n"
        "    if 'WATCHFILES_CHANGES' in os.environ:\n"
        "        lines.append('W\\t' + os.environ['WATCHFILES_CHANGES'])\n"
        "    if 'BENCH_STDIN' in os.environ:\n"
        "        lines += ['S\\t' + x.rstrip('\\n') for x in sys.stdin]\n"
        "    open(p + '.tmp', 'w').write(''.join(x + '\\n' for x in lines))\n"
        "    os.rename(p + '.tmp', p)\n"
    )
    py.chmod(0o755)
    return py, "Python fallback (no C compiler): time.time_ns() as first statement"


@dataclass
class Run:
    ts_ns: int
    names: set[str]


def read_runs(logdir: Path, root: Path, skip: set[str]) -> list[Run]:
    prefix = str(root) + "/"
    runs: list[Run] = []
    for name in os.listdir(logdir):
        if name.endswith(".tmp") or name in skip:
            continue
        names: set[str] = set()
        text = read_text(str(logdir / name)) or ""
        for line in text.splitlines():
            kind, _, value = line.partition("\t")
            values: list[str] = [value]
            if kind == "W":
                with contextlib.suppress(ValueError):
                    values = [str(c[1]) for c in json.loads(value)]
            for v in values:
                v = v.removeprefix(prefix).removeprefix("./")
                if v:
                    names.add(v)
        runs.append(Run(ts_ns=int(name.split(".")[0]), names=names))
    runs.sort(key=lambda r: r.ts_ns)
    return runs


def count_entries(logdir: Path) -> int:
    return len(os.listdir(logdir))


# --------------------------------------------------------------------------- tools


@dataclass
class Ctx:
    workdir: Path
    tree: Tree
    recorder: Path
    scale: Scale
    ready_timeout: float = 60.0


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    logdir: Path
    startup_s: float
    ready_how: str
    stop_hook: Callable[[], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)


class ToolError(Exception):
    pass


def spawn(
    argv: list[str],
    ctx: Ctx,
    logdir: Path,
    extra_env: dict[str, str] | None = None,
    stderr: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a tool in a session of its own; its stderr goes to WORKDIR/stderr/<name>."""
    if stderr is None:
        errdir = ctx.workdir / "stderr"
        errdir.mkdir(exist_ok=True)
        errfile = errdir / logdir.name
        with open(errfile, "ab") as f:
            f.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        stderr = os.open(errfile, os.O_WRONLY | os.O_APPEND)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["BENCH_LOGDIR"] = str(logdir)
    if extra_env:
        env.update(extra_env)
    own_fd = isinstance(stderr, int) and stderr >= 0
    try:
        return subprocess.Popen(
            argv,
            cwd=ctx.tree.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    finally:
        if own_fd:
            assert isinstance(stderr, int)
            os.close(stderr)


def wait_watches_stable(
    proc: subprocess.Popen[bytes], t0: float, stable_s: float, timeout: float = 120.0
) -> float:
    """Ready = the moment the inotify watch count reached the value it then kept for stable_s."""
    last = -1
    last_change = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise ToolError(f"exited with {proc.returncode} during start-up")
        t_read = time.monotonic()
        n = usage(proc.pid).watches
        now = time.monotonic()
        if n != last:
            last, last_change = n, t_read
        elif n > 0 and now - last_change >= stable_s:
            return last_change - t0
        if now - t0 > timeout:
            raise ToolError(f"not ready after {timeout:.0f}s")
        time.sleep(max(0.01, 2 * (now - t_read)))


def wait_event(
    proc: subprocess.Popen[bytes], ev: threading.Event, t0: float, timeout: float = 120.0
) -> None:
    while not ev.wait(0.005):
        if proc.poll() is not None:
            raise ToolError(f"exited with {proc.returncode} during start-up")
        if time.monotonic() - t0 > timeout:
            raise ToolError(f"not ready after {timeout:.0f}s")


class Tool:
    name = ""
    debounce = ""
    names_how = ""  # how the changed file names reach the check
    per_edit_gap_s = 0.05

    def __init__(self) -> None:
        self.extra_env: dict[str, str] = {}  # set for one pass (DevLoop's bench mode)

    def unavailable(self) -> str | None:
        return None

    def version(self) -> str:
        return ""

    def describe(self, ctx: Ctx) -> str:
        return ""

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        raise NotImplementedError

    def stop(self, r: Running) -> None:
        if r.stop_hook:
            with contextlib.suppress(Exception):
                r.stop_hook()
        if r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGTERM)
            try:
                r.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait(10)
        # stragglers left in the session (e.g. a check still running)
        for pid in session_pids(r.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for t in r.threads:
            t.join(2)


class InotifyWait(Tool):
    name = "inotifywait + sh loop"
    debounce = "none (one run per event)"
    names_how = "path of each event as $1"

    def unavailable(self) -> str | None:
        return None if shutil.which("inotifywait") else "inotifywait not installed"

    def version(self) -> str:
        return "inotify-tools " + first_line(sh(["inotifywait", "--help"]).stdout).split()[-1]

    def script(self) -> str:
        return (
            "inotifywait -m -r -e close_write,moved_to,create,delete "
            '--format "%w%f" "$1" "@$1/node_modules" '
            '| while IFS= read -r f; do "$2" "$f"; done'
        )

    def describe(self, ctx: Ctx) -> str:
        return f"`sh -c '{self.script()}' _ TREE RECORDER`"

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        t0 = time.monotonic()
        proc = spawn(
            ["sh", "-c", self.script(), "_", str(ctx.tree.root), str(ctx.recorder)],
            ctx,
            logdir,
            stderr=subprocess.PIPE,
        )
        ready = threading.Event()
        stamp: list[float] = []

        def reader() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if b"Watches established" in line and not ready.is_set():
                    stamp.append(time.monotonic())
                    ready.set()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        r = Running(proc, logdir, 0.0, "`Watches established.` on stderr", threads=[th])
        try:
            wait_event(proc, ready, t0, ctx.ready_timeout)
        except ToolError:
            self.stop(r)
            raise
        r.startup_s = stamp[0] - t0
        return r


class Entr(Tool):
    name = "entr"
    debounce = "none"
    names_how = "first changed file only (`/_`); missed = changes no run started after"

    def unavailable(self) -> str | None:
        return None if shutil.which("entr") else "entr not installed"

    def version(self) -> str:
        res = sh(["entr"])
        return "entr " + first_line(res.stdout + res.stderr).replace("release:", "").strip()

    def script(self) -> str:
        return (
            'find "$1" -name node_modules -prune -o -type f -name "*.txt" -print '
            '| exec entr -n -p "$2" /_'
        )

    def describe(self, ctx: Ctx) -> str:
        return f"`sh -c '{self.script()}' _ TREE RECORDER`"

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        t0 = time.monotonic()
        proc = spawn(
            ["sh", "-c", self.script(), "_", str(ctx.tree.root), str(ctx.recorder)], ctx, logdir
        )
        r = Running(proc, logdir, 0.0, "inotify watch count stable")
        try:
            r.startup_s = wait_watches_stable(proc, t0, 1.0, ctx.ready_timeout)
        except ToolError:
            self.stop(r)
            raise
        return r


class Watchmedo(Tool):
    name = "watchmedo shell-command"
    debounce = "none (`--drop`: events during a run are dropped)"
    names_how = "`${watch_src_path}` of each event"

    def unavailable(self) -> str | None:
        try:
            import watchdog.watchmedo  # noqa: F401
        except ImportError:
            return "watchdog[watchmedo] not installed"
        return None

    def version(self) -> str:
        from importlib.metadata import version

        return f"watchdog {version('watchdog')}"

    def argv(self, ctx: Ctx) -> list[str]:
        return [
            sys.executable,
            "-m",
            "watchdog.watchmedo",
            "shell-command",
            "--recursive",
            "--patterns",
            "**/*.txt",
            "--ignore-patterns",
            "**/node_modules/**",
            "--drop",
            "--command",
            f'{ctx.recorder} "${{watch_src_path}}"',
            str(ctx.tree.root),
        ]

    def describe(self, ctx: Ctx) -> str:
        return (
            "`watchmedo shell-command --recursive --patterns '**/*.txt' --ignore-patterns "
            "'**/node_modules/**' --drop --command 'RECORDER \"${watch_src_path}\"' TREE`"
        )

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        t0 = time.monotonic()
        proc = spawn(self.argv(ctx), ctx, logdir)
        r = Running(proc, logdir, 0.0, "inotify watch count stable")
        try:
            r.startup_s = wait_watches_stable(proc, t0, 1.0, ctx.ready_timeout)
        except ToolError:
            self.stop(r)
            raise
        return r


class Watchfiles(Tool):
    name = "watchfiles CLI"
    debounce = "CLI fixed: step 50 ms, debounce 1600 ms (not settable from the CLI)"
    names_how = "`$WATCHFILES_CHANGES` (JSON)"
    per_edit_gap_s = 0.15

    def unavailable(self) -> str | None:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            return "watchfiles not installed"
        return None

    def version(self) -> str:
        from importlib.metadata import version

        return f"watchfiles {version('watchfiles')}"

    def argv(self, ctx: Ctx) -> list[str]:
        return [
            sys.executable,
            "-m",
            "watchfiles",
            "--target-type",
            "command",
            "--ignore-paths",
            str(ctx.tree.root / "node_modules"),
            "--verbosity",
            "warning",
            str(ctx.recorder),
            str(ctx.tree.root),
        ]

    def describe(self, ctx: Ctx) -> str:
        return "`watchfiles --target-type command --ignore-paths TREE/node_modules RECORDER TREE`"

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        t0 = time.monotonic()
        proc = spawn(self.argv(ctx), ctx, logdir)
        r = Running(proc, logdir, 0.0, "inotify watch count stable")
        try:
            r.startup_s = wait_watches_stable(proc, t0, 1.0, ctx.ready_timeout)
        except ToolError:
            self.stop(r)
            raise
        return r


class Watchman(Tool):
    name = "watchman trigger"
    debounce = "`settle: 0` in .watchmanconfig"
    names_how = "stdin, NAME_PER_LINE"

    def unavailable(self) -> str | None:
        if not shutil.which("watchman"):
            return "watchman not installed (no package for this distribution?)"
        res = sh(["watchman", "--version"], timeout=30)
        return None if res.returncode == 0 else f"watchman does not run: {res.stderr.strip()}"

    def version(self) -> str:
        return "watchman " + sh(["watchman", "--version"]).stdout.strip()

    def describe(self, ctx: Ctx) -> str:
        return (
            "`watchman --foreground` + `watch-project TREE` + trigger "
            "`{expression: [suffix, txt], command: [RECORDER], stdin: NAME_PER_LINE}`, "
            "`.watchmanconfig` `{settle: 0, ignore_dirs: [node_modules]}`"
        )

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        state = ctx.workdir / "watchman"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        sock = str(state / "sock")
        client = ["watchman", f"--sockname={sock}", "--no-spawn"]
        t0 = time.monotonic()
        proc = spawn(
            [
                "watchman",
                "--foreground",
                f"--sockname={sock}",
                f"--statefile={state / 'state'}",
                f"--logfile={state / 'log'}",
                f"--pidfile={state / 'pid'}",
                "--no-save-state",
            ],
            ctx,
            logdir,
            extra_env={"BENCH_STDIN": "1"},
        )

        def shutdown() -> None:
            sh([*client, "shutdown-server"], timeout=20)

        r = Running(
            proc,
            logdir,
            0.0,
            "`watch-project` + first query (waits for the crawl) + trigger registered",
            stop_hook=shutdown,
        )
        try:
            while sh([*client, "version"], timeout=20).returncode != 0:
                if proc.poll() is not None:
                    raise ToolError(f"watchman exited with {proc.returncode}")
                if time.monotonic() - t0 > 60:
                    raise ToolError("watchman server did not come up")
                time.sleep(0.005)
            root = str(ctx.tree.root)
            for cmd in (
                ["watch-project", root],
                ["query", root, {"expression": ["name", "bench-none"], "fields": ["name"]}],
                [
                    "trigger",
                    root,
                    {
                        "name": "bench",
                        "expression": ["suffix", "txt"],
                        "command": [str(ctx.recorder)],
                        "stdin": "NAME_PER_LINE",
                    },
                ],
            ):
                res = subprocess.run(
                    [*client, "-j"],
                    input=json.dumps(cmd),
                    text=True,
                    capture_output=True,
                    timeout=300,
                    check=False,
                )
                if res.returncode != 0 or '"error"' in res.stdout:
                    raise ToolError(f"watchman {cmd[0]} failed: {res.stdout} {res.stderr}")
            r.startup_s = time.monotonic() - t0
        except (ToolError, subprocess.TimeoutExpired):
            self.stop(r)
            raise
        return r


class DevLoop(Tool):
    name = "DevLoop"
    debounce = "`debounce_ms = 0`"
    names_how = "`{files}` argv expansion"

    def unavailable(self) -> str | None:
        try:
            import devloop  # noqa: F401
        except ImportError:
            return "devloop not installed (pip install -e .)"
        if not (REPO / "devloop" / "daemon.py").exists() and not self._has_watch():
            return "devloop has no `watch --foreground` yet"
        return None

    def _has_watch(self) -> bool:
        res = sh([sys.executable, "-m", "devloop", "watch", "--help"], timeout=60)
        return res.returncode == 0

    def version(self) -> str:
        from importlib.metadata import version

        rev = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
        return f"devloop {version('devloop-daemon')}" + (f" ({rev})" if rev else "")

    def describe(self, ctx: Ctx) -> str:
        return (
            "`devloop watch --foreground TREE` with `devloop.toml`: `ignore = "
            '["node_modules/"]`, one check `command = [RECORDER, "{files}"]`, '
            '`patterns = ["*.txt"]`, `debounce_ms = 0`, `run_on_start = false`'
        )

    def start(self, ctx: Ctx, logdir: Path) -> Running:
        shutil.rmtree(ctx.tree.root / ".devloop", ignore_errors=True)
        sock_path = ctx.workdir / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        ready = threading.Event()
        stamp: list[float] = []
        messages: list[str] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                now = time.monotonic()
                text = data.decode(errors="replace")
                messages.append(text)
                if "READY=1" in text.split("\n") and not ready.is_set():
                    stamp.append(now)
                    ready.set()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        t0 = time.monotonic()
        proc = spawn(
            [sys.executable, "-m", "devloop", "watch", "--foreground", str(ctx.tree.root)],
            ctx,
            logdir,
            extra_env={"NOTIFY_SOCKET": str(sock_path), **self.extra_env},
        )

        def close() -> None:
            done.set()
            sock.close()

        r = Running(
            proc, logdir, 0.0, "READY=1 on NOTIFY_SOCKET", threads=[th], extra={"notify": messages}
        )
        try:
            wait_event(proc, ready, t0, ctx.ready_timeout)
        except ToolError:
            self.stop(r)
            close()
            raise
        r.startup_s = stamp[0] - t0
        r.stop_hook = close
        return r


ALL_TOOLS: list[Tool] = [InotifyWait(), Entr(), Watchmedo(), Watchfiles(), Watchman(), DevLoop()]


# --------------------------------------------------------------------------- phases


def stderr_tail(ctx: Ctx, logdir: Path, n: int = 1) -> str:
    text = read_text(str(ctx.workdir / "stderr" / logdir.name)) or ""
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("--- ")]
    return " | ".join(lines[-n:])


def wait_settled(r: Running, max_s: float = 60.0) -> float:
    """Wait until the tool used no CPU for a whole second (start-up work done); seconds waited."""
    t0 = time.monotonic()
    last = usage(r.proc.pid, with_watches=False).cpu_s
    while time.monotonic() - t0 < max_s:
        time.sleep(1.0)
        now = usage(r.proc.pid, with_watches=False).cpu_s
        if now == last:
            break
        last = now
    return round(time.monotonic() - t0, 1)


def wait_quiet(r: Running, quiet_s: float, max_s: float) -> bool:
    """Wait until the tool is done: no new check run for quiet_s, and the tool itself used
    less than 2% of a CPU over the last second (it may still be rescanning, about to start a
    run). False if still busy after max_s."""
    t_end = time.monotonic() + max_s
    last_n = count_entries(r.logdir)
    last_t = time.monotonic()
    cpu_samples: list[tuple[float, float]] = []
    while time.monotonic() < t_end:
        time.sleep(0.05)
        now = time.monotonic()
        cpu_samples.append((now, usage(r.proc.pid, with_watches=False).cpu_s))
        while len(cpu_samples) > 2 and now - cpu_samples[1][0] >= 1.0:
            cpu_samples.pop(0)
        n = count_entries(r.logdir)
        if n != last_n:
            last_n, last_t = n, now
            continue
        span = now - cpu_samples[0][0]
        idle = cpu_samples[-1][1] - cpu_samples[0][1] < 0.02 * span
        if now - last_t >= quiet_s and span >= 1.0 and idle:
            return True
    return False


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in (read_text("/proc/stat") or "cpu 0").split("\n")[0].split()[1:]]
    idle = sum(fields[3:5])
    return sum(fields) - idle, sum(fields)


def phase_idle(r: Running, ctx: Ctx) -> dict[str, Any]:
    wait_quiet(r, ctx.scale.quiet_s, 120)
    settled = wait_settled(r)
    u0 = usage(r.proc.pid, with_watches=False)
    b0 = machine_busy()
    t0 = time.monotonic()
    time.sleep(ctx.scale.idle_s)
    u1 = usage(r.proc.pid, with_watches=True)
    b1 = machine_busy()
    span = time.monotonic() - t0
    busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
    return {
        "idle_window_s": round(span, 2),
        "idle_cpu_s": round(u1.cpu_s - u0.cpu_s, 3),
        "idle_wakeups": u1.wakeups - u0.wakeups,
        "rss_mib": round(u1.rss_mib, 1),
        "watches": u1.watches,
        "procs": u1.procs,
        "machine_busy_pct_during_idle": round(100 * busy, 1),
        "settled_after_ready_s": settled,
    }


def write_file(path: Path, data: bytes) -> int:
    t = time.time_ns()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return t


def phase_reaction(r: Running, ctx: Ctx, tool: Tool, count: int | None = None) -> dict[str, Any]:
    rng = random.Random(1234)
    picks = rng.sample(ctx.tree.files, count or ctx.scale.edits)
    skip = set(os.listdir(r.logdir))
    edits: list[tuple[str, int]] = []
    for k, rel in enumerate(picks):
        n0 = count_entries(r.logdir)
        t = write_file(ctx.tree.root / rel, f"edit {k}\n".encode())
        edits.append((rel, t))
        deadline = time.monotonic() + 3.0
        while count_entries(r.logdir) == n0 and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(tool.per_edit_gap_s)
    wait_quiet(r, 1.0, 10)
    runs = read_runs(r.logdir, ctx.tree.root, skip)
    lat: list[float] = []
    missed = 0
    for i, (rel, t) in enumerate(edits):
        t_next = edits[i + 1][1] if i + 1 < len(edits) else None
        hit = next((x for x in runs if x.ts_ns >= t and rel in x.names), None)
        if hit is None or (t_next is not None and hit.ts_ns > t_next + 5_000_000_000):
            missed += 1
            continue
        lat.append((hit.ts_ns - t) / 1e6)
    out: dict[str, Any] = {
        "edits": len(edits),
        "edits_without_run": missed,
        "runs_during_edits": len(runs),
    }
    if lat:
        out.update(
            reaction_median_ms=round(statistics.median(lat), 2),
            reaction_p99_ms=round(percentile(lat, 99), 2),
            reaction_min_ms=round(min(lat), 2),
            reaction_max_ms=round(max(lat), 2),
            reactions_ms=[round(x, 2) for x in lat],  # in edit order: where the tail lies
        )
    return out


def phase_storm(
    r: Running, ctx: Ctx, tool: Tool, label: str, pause: bool = False
) -> dict[str, Any]:
    wait_quiet(r, 1.0, 30)
    settled = wait_settled(r)
    targets = ctx.tree.files[: ctx.scale.storm_files]
    skip = set(os.listdir(r.logdir))
    write_times: list[int] = []
    payload = f"{label} {time.time_ns()}\n".encode()
    paused = session_pids(r.proc.pid) if pause else []
    for pid in paused:  # frozen tools cannot drain the kernel queue: it overflows for certain
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    t_start = time.time_ns()
    try:
        for rel in targets:
            write_times.append(write_file(ctx.tree.root / rel, payload))
    finally:
        t_end = time.time_ns()
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    finished = wait_quiet(r, ctx.scale.quiet_s, ctx.scale.drain_max_s)
    alive = r.proc.poll() is None
    runs = [x for x in read_runs(r.logdir, ctx.tree.root, skip) if x.ts_ns >= t_start]
    delivered: set[str] = set()
    for x in runs:
        delivered |= x.names
    last_run = runs[-1].ts_ns if runs else 0
    stale = sum(1 for t in write_times if t > last_run)
    missed_names = sum(1 for rel in targets if rel not in delivered)
    by_names = not isinstance(tool, Entr)
    return {
        "files": len(targets),
        "paused_during_writes": pause,
        "settled_before_s": settled,
        "max_queued_events": int(QUEUE_SYSCTL.read_text()),
        "write_s": round((t_end - t_start) / 1e9, 2),
        "runs": len(runs),
        "missed": missed_names if by_names else stale,
        "missed_method": "names" if by_names else "no run after the write",
        "missed_names": missed_names,
        "stale_after_last_run": stale,
        "drained": finished,
        "tool_alive": alive,
        "last_run_after_end_ms": round((last_run - t_end) / 1e6, 1) if runs else None,
        "stderr_tail": "" if alive else stderr_tail(ctx, r.logdir, 3)[:500],
    }


def slow_callbacks(errfile: Path, offset: int) -> list[float]:
    """Durations (ms) of the callbacks asyncio's debug mode logged, from offset on, until
    the tool was told to stop (its shutdown is not part of watching)."""
    with open(errfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace").partition(" INFO stopping\n")[0]
    return [float(m) * 1000 for m in re.findall(r" took (\d+\.\d+) seconds", text)]


def phase_after_ready(tool: Tool, ctx: Ctx, logdir: Path, stall: bool = False) -> dict[str, Any]:
    """A fresh start; edits from the moment it is ready; CPU from ready until it is quiet.

    stall=True (DevLoop): the same in DevLoop's bench mode, which logs every callback
    that held its event loop longer than STALL_MS (asyncio debug mode, which slows it:
    the other figures of that pass are not reported).
    """
    errfile = ctx.workdir / "stderr" / logdir.name
    offset = errfile.stat().st_size if errfile.exists() else 0
    if stall:
        tool.extra_env = {SLOW_CALLBACK_ENV: str(STALL_MS)}
    try:
        r = tool.start(ctx, logdir)
    finally:
        tool.extra_env = {}
    try:
        u0 = usage(r.proc.pid, with_watches=False)
        t0 = time.monotonic()
        out: dict[str, Any] = {"ready_s": round(r.startup_s, 3), "loadavg_at_ready": " ".join(
            (read_text("/proc/loadavg") or "").split()[:3])}
        reaction = phase_reaction(r, ctx, tool, AFTER_READY_EDITS)
        quiet = wait_quiet(r, ctx.scale.quiet_s, 300)
        u1 = usage(r.proc.pid, with_watches=False)
        out.update(
            reaction,
            runs_per_edit=round(reaction["runs_during_edits"] / reaction["edits"], 2),
            cpu_ready_to_quiet_s=round(u1.cpu_s - u0.cpu_s, 2),
            quiet_after_ready_s=round(time.monotonic() - t0, 1) if quiet else None,
            rss_mib=round(u1.rss_mib, 1),
        )
    finally:
        tool.stop(r)
    if stall:
        took = slow_callbacks(errfile, offset)
        return {"stalls": len(took), "longest_ms": round(max(took), 1) if took else None,
                "threshold_ms": STALL_MS}
    return out


@contextlib.contextmanager
def small_queue(n: int) -> Iterator[int]:
    old = int(QUEUE_SYSCTL.read_text())
    try:
        QUEUE_SYSCTL.write_text(f"{n}\n")
        yield old
    finally:
        QUEUE_SYSCTL.write_text(f"{old}\n")


def bench_tool(tool: Tool, ctx: Ctx) -> dict[str, Any]:
    res: dict[str, Any] = {
        "tool": tool.name,
        "debounce": tool.debounce,
        "names": tool.names_how,
        "command": tool.describe(ctx),
    }
    reason = tool.unavailable()
    if reason:
        res["unavailable"] = reason
        log(f"{tool.name}: skipped ({reason})")
        return res
    res["version"] = tool.version()
    res["loadavg_at_start"] = " ".join((read_text("/proc/loadavg") or "").split()[:3])
    logdir = ctx.workdir / "logs" / tool.name.split()[0]
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    if ctx.scale is HUGE:  # the monorepo tier: only the pass right after ready
        return bench_after_ready(tool, ctx, logdir, res)
    if ctx.scale is SMALL:  # the small tier: only the reaction pass
        return bench_reaction_only(tool, ctx, logdir, res)
    log(f"{tool.name}: start-up")
    try:
        r = tool.start(ctx, logdir)
    except (ToolError, subprocess.TimeoutExpired, OSError) as e:
        res["error"] = f"start-up: {e}"
        tail = stderr_tail(ctx, logdir)
        if tail:
            res["error"] += f"; its stderr ends: {tail[:300]}"
            res["stderr_lines"] = len(
                (read_text(str(ctx.workdir / "stderr" / logdir.name)) or "").splitlines()
            )
        log(f"{tool.name}: {res['error']}")
        return res
    try:
        res["startup_s"] = round(r.startup_s, 3)
        res["ready_how"] = r.ready_how
        res["watches_at_ready"] = usage(r.proc.pid).watches
        log(
            f"{tool.name}: ready in {r.startup_s:.3f}s, {res['watches_at_ready']} watches; "
            f"idle {ctx.scale.idle_s:.0f}s"
        )
        res.update(phase_idle(r, ctx))
        log(f"{tool.name}: reaction ({ctx.scale.edits} edits)")
        res.update(phase_reaction(r, ctx, tool))
        log(f"{tool.name}: storm ({ctx.scale.storm_files} files)")
        res["storm"] = phase_storm(r, ctx, tool, "storm")
        if "notify" in r.extra:
            res["notify_last"] = [m for m in r.extra["notify"] if "STATUS=" in m][-1:]
    except Exception as e:  # keep going with the other tools
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"{tool.name}: {res['error']}")
    finally:
        tool.stop(r)
    if "storm" not in res:
        return res
    log(f"{tool.name}: overflow storm (max_queued_events={ctx.scale.small_queue})")
    try:
        with small_queue(ctx.scale.small_queue) as old:
            res["queue_default"] = old
            ctx.ready_timeout = 60.0
            try:
                r2 = tool.start(ctx, logdir)
            finally:
                ctx.ready_timeout = 60.0
            try:
                res["storm_overflow"] = phase_storm(r2, ctx, tool, "overflow", pause=True)
            finally:
                tool.stop(r2)
    except Exception as e:
        res["storm_overflow"] = {"error": f"{type(e).__name__}: {e}"}
        tail = stderr_tail(ctx, logdir)
        if tail:
            res["storm_overflow"]["error"] += f"; its stderr ends: {tail[:300]}"
        log(f"{tool.name}: overflow storm: {e}")
    return bench_after_ready(tool, ctx, logdir, res)


def bench_reaction_only(tool: Tool, ctx: Ctx, logdir: Path, res: dict[str, Any]
                        ) -> dict[str, Any]:
    log(f"{tool.name}: start-up, then reaction ({ctx.scale.edits} edits)")
    try:
        r = tool.start(ctx, logdir)
    except (ToolError, subprocess.TimeoutExpired, OSError) as e:
        res["error"] = f"start-up: {e}"
        return res
    try:
        res["startup_s"] = round(r.startup_s, 3)
        res["ready_how"] = r.ready_how
        res["watches_at_ready"] = usage(r.proc.pid).watches
        wait_quiet(r, 1.0, 30)
        res.update(phase_reaction(r, ctx, tool))
        res["rss_mib"] = round(usage(r.proc.pid, with_watches=False).rss_mib, 1)
    except Exception as e:  # keep going with the other tools
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        tool.stop(r)
    return res


def bench_after_ready(tool: Tool, ctx: Ctx, logdir: Path, res: dict[str, Any]) -> dict[str, Any]:
    log(f"{tool.name}: right after ready ({AFTER_READY_EDITS} edits)")
    try:
        res["after_ready"] = phase_after_ready(tool, ctx, logdir)
        if isinstance(tool, DevLoop):
            log(f"{tool.name}: loop stalls (bench mode)")
            res["loop_stall"] = phase_after_ready(tool, ctx, logdir, stall=True)
    except Exception as e:
        res["after_ready_error"] = f"{type(e).__name__}: {e}"
        log(f"{tool.name}: right after ready: {res['after_ready_error']}")
    return res


# --------------------------------------------------------------------------- install


def install(skip_devloop: bool) -> list[str]:
    notes: list[str] = []
    apt_pkgs = [
        (p, exe)
        for p, exe in (
            ("inotify-tools", "inotifywait"),
            ("entr", "entr"),
            ("watchman", "watchman"),
            ("gcc", "cc"),
        )
        if not shutil.which(exe)
    ]
    want_devloop = not skip_devloop and (REPO / "pyproject.toml").exists()
    if want_devloop and not Path("/usr/include/systemd/sd-daemon.h").exists():
        apt_pkgs += [("libsystemd-dev", ""), ("pkg-config", "")]
    if apt_pkgs:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            notes.append("cannot apt-get install " + " ".join(p for p, _ in apt_pkgs))
        else:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
            for pkg, _ in apt_pkgs:
                log(f"apt-get install {pkg}")
                res = subprocess.run(
                    ["apt-get", "install", "-y", "-qq", pkg],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if res.returncode != 0:
                    notes.append(f"apt-get install {pkg} failed: {first_line(res.stderr)}")
    pip: list[str] = []
    try:
        import watchdog.watchmedo  # noqa: F401
    except ImportError:
        pip.append("watchdog[watchmedo]")
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        pip.append("watchfiles")
    if pip:
        log("pip install " + " ".join(pip))
        res = sh([sys.executable, "-m", "pip", "install", "-q", *pip])
        if res.returncode != 0:
            notes.append(f"pip install {' '.join(pip)} failed: {first_line(res.stderr)}")
    if want_devloop:  # every time: the dependencies may have changed since the last run
        log(f"pip install -e {REPO}")
        res = sh([sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO)])
        if res.returncode != 0:
            notes.append(f"pip install -e {REPO} failed: {first_line(res.stderr)}")
    return notes


# --------------------------------------------------------------------------- report


def machine_info(ctx: Ctx) -> dict[str, str]:
    cpu = ""
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in (read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    osr = ""
    for line in (read_text("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            osr = line.split("=", 1)[1].strip('"')
    fs = sh(["stat", "-f", "-c", "%T", str(ctx.tree.root)]).stdout.strip()
    return {
        "cpu": f"{cpu} ({os.cpu_count()} CPUs)",
        "memory": mem,
        "os": osr,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "filesystem": fs,
        "max_queued_events": QUEUE_SYSCTL.read_text().strip(),
        "max_user_watches": (read_text("/proc/sys/fs/inotify/max_user_watches") or "").strip(),
    }


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def storm_cell(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if "error" in s:
        return "error"
    cell = f"{s['missed']:,} / {s['runs']:,}"
    if not s["drained"]:
        cell += " (still running)"
    if not s["tool_alive"]:
        cell += " (tool died)"
    return cell


def headline(results: list[dict[str, Any]], scale: Scale) -> str:
    rows = [
        "| Tool | Reaction median (ms) | Reaction p99 (ms) | Start-up (s) | inotify watches | "
        f"Idle CPU ({scale.idle_s:.0f} s) | Idle wake-ups ({scale.idle_s:.0f} s) | RSS (MiB) | "
        f"Storm: missed / runs | Overflow storm: missed / runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "unavailable" in r:
            rows.append(f"| {r['tool']} | not run: {r['unavailable']} |" + " |" * 8)
            continue
        if "startup_s" not in r:
            rows.append(f"| {r['tool']} | error: {r.get('error', '?')} |" + " |" * 8)
            continue
        rows.append(
            f"| {r['tool']} | {fmt(r.get('reaction_median_ms'), '.2f')} | "
            f"{fmt(r.get('reaction_p99_ms'), '.2f')} | {r['startup_s']:.2f} | "
            f"{fmt(r.get('watches'), ',')} | {fmt(r.get('idle_cpu_s'), '.2f')} s | "
            f"{fmt(r.get('idle_wakeups'), ',')} | {fmt(r.get('rss_mib'), '.1f')} | "
            f"{storm_cell(r.get('storm'))} | {storm_cell(r.get('storm_overflow'))} |"
        )
    return "\n".join(rows)


def targets(results: list[dict[str, Any]], tree: Tree) -> str:
    by = {r["tool"]: r for r in results}
    dl = by.get("DevLoop")
    if not dl or "startup_s" not in dl:
        why = (dl or {}).get("unavailable") or (dl or {}).get("error") or "not run"
        return f"DevLoop was not measured: {why}."
    others = [r for r in results if r["tool"] != "DevLoop" and "reaction_median_ms" in r]
    floor = by.get("inotifywait + sh loop", {})
    lines = ["| Target | Measured | Met |", "|---|---|:---:|"]

    def row(target: str, measured: str, ok: bool | None) -> None:
        mark = "-" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {target} | {measured} | {mark} |")

    med = dl.get("reaction_median_ms")
    fl = floor.get("reaction_median_ms")
    if med is not None and fl is not None:
        row(
            "median reaction within 3 ms of the inotifywait floor",
            f"{med:.2f} ms vs floor {fl:.2f} ms (+{med - fl:.2f} ms)",
            med - fl <= 3.0,
        )
    peers = [r for r in others if r["tool"] != "inotifywait + sh loop"]
    if med is not None and peers:
        best = min(peers, key=lambda r: r["reaction_median_ms"])
        row(
            "median reaction below every other tool",
            f"{med:.2f} ms vs best peer {best['tool']} {best['reaction_median_ms']:.2f} ms",
            med < best["reaction_median_ms"],
        )
    if "startup_s" in floor:
        row(
            "start-up faster than `inotifywait -r`",
            f"{dl['startup_s']:.2f} s vs {floor['startup_s']:.2f} s",
            dl["startup_s"] < floor["startup_s"],
        )
    row(
        "watches = directories not ignored, exactly",
        f"{fmt(dl.get('watches'), ',')} vs {tree.dirs:,}",
        dl.get("watches") == tree.dirs,
    )
    # a polling tool wakes up on its own at idle: at least once per 10 s of the window
    polling = [
        r
        for r in others
        if r["tool"] != "DevLoop"
        and r.get("idle_wakeups", 0) >= max(1.0, r.get("idle_window_s", 0) / 10)
    ]
    if polling and "idle_wakeups" in dl:
        least = min(polling, key=lambda r: r["idle_wakeups"])
        names = ", ".join(f"{r['tool']} {r['idle_wakeups']:,}" for r in polling)
        row(
            "idle: >=10x fewer wake-ups than any polling tool",
            f"{dl['idle_wakeups']:,} vs polling tools: {names}",
            dl["idle_wakeups"] * 10 <= least["idle_wakeups"],
        )
    if "rss_mib" in dl:
        row("memory < 40 MB RSS", f"{dl['rss_mib']:.1f} MiB", dl["rss_mib"] * 1.048576 < 40)
    for key, label in (("storm", "storm"), ("storm_overflow", "overflow storm")):
        s = dl.get(key)
        if s and "error" not in s:
            row(
                f"{label}: zero missed changes, check runs ≤ 2",
                f"{s['missed']:,} missed, {s['runs']:,} runs",
                s["missed"] == 0 and s["runs"] <= 2,
            )
        elif s:
            row(f"{label}: zero missed changes, check runs ≤ 2", s["error"], False)
    return "\n".join(lines)


def after_ready_table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| Tool | Ready (s) | Reaction median (ms) | Reaction p99 (ms) | Runs per edit | "
        "CPU ready → quiet (s) | Quiet after (s) | RSS (MiB) | Load average at ready |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        a = r.get("after_ready")
        if not a:
            why = r.get("unavailable") or r.get("after_ready_error") or r.get("error") or "-"
            rows.append(f"| {r['tool']} | not measured: {why} |" + " |" * 7)
            continue
        rows.append(
            f"| {r['tool']} | {a['ready_s']:.2f} | {fmt(a.get('reaction_median_ms'), '.2f')} | "
            f"{fmt(a.get('reaction_p99_ms'), '.2f')} | {a['runs_per_edit']:.2f} | "
            f"{a['cpu_ready_to_quiet_s']:.2f} | {fmt(a.get('quiet_after_ready_s'), '.1f')} | "
            f"{a['rss_mib']:.1f} | {a.get('loadavg_at_ready', '-')} |"
        )
    stall = next((r["loop_stall"] for r in results if "loop_stall" in r), None)
    if stall:
        rows.append(
            f"\nDevLoop loop stalls (a second pass in its bench mode, `{SLOW_CALLBACK_ENV}="
            f"{stall['threshold_ms']}`: asyncio's debug mode logs every callback that held "
            f"the event loop longer than {stall['threshold_ms']} ms, from start-up to quiet): "
            f"**{stall['stalls']}** callbacks over {stall['threshold_ms']} ms"
            + (f", the longest {stall['longest_ms']} ms" if stall["stalls"] else "")
            + " (wall clock: on a busy machine it includes time the process waited for a CPU)."
        )
    return "\n".join(rows)


def details(results: list[dict[str, Any]]) -> str:
    out = []
    for r in results:
        out.append(f"### {r['tool']}\n")
        out.append(f"- version: {r.get('version', '-')}")
        out.append(f"- command: {r['command']}")
        out.append(f"- debounce: {r['debounce']}; file names reach the check by: {r['names']}")
        if "unavailable" in r:
            out.append(f"- **not run**: {r['unavailable']}")
        if "error" in r:
            out.append(f"- **error**: {r['error']}")
        if "startup_s" in r:
            out.append(
                f"- ready signal: {r['ready_how']}; start-up {r['startup_s']:.3f} s; "
                f"watches at ready {r['watches_at_ready']:,}, after idle "
                f"{fmt(r.get('watches'), ',')}; processes {r.get('procs')}"
            )
        if "reaction_median_ms" in r:
            out.append(
                f"- reaction over {r['edits']} edits: median {r['reaction_median_ms']} "
                f"ms, p99 {r['reaction_p99_ms']} ms, min {r['reaction_min_ms']} ms, "
                f"max {r['reaction_max_ms']} ms; edits with no run: "
                f"{r['edits_without_run']}; check runs: {r['runs_during_edits']}"
            )
        elif "edits" in r:
            out.append(f"- reaction: no edit produced a run ({r['edits']} edits)")
        if "idle_cpu_s" in r:
            out.append(
                f"- idle {r['idle_window_s']} s: CPU {r['idle_cpu_s']} s, voluntary "
                f"context switches {r['idle_wakeups']:,}; RSS {r['rss_mib']} MiB; the whole "
                f"machine was {r.get('machine_busy_pct_during_idle')}% busy meanwhile (load "
                f"average when the tool started: {r.get('loadavg_at_start')})"
            )
        for key in ("storm", "storm_overflow", "after_ready", "loop_stall"):
            s = r.get(key)
            if s:
                out.append(f"- {key}: `{json.dumps(s)}`")
        if r.get("notify_last"):
            out.append(f"- last sd_notify: `{r['notify_last'][0].strip()}`")
        out.append("")
    return "\n".join(out)


def load_tier(name: str) -> dict[str, Any] | None:
    """Another tier's last run (bench/RESULTS-NAME.json), shown in RESULTS.md with its date."""
    try:
        data: dict[str, Any] = json.loads((BENCH_DIR / f"RESULTS-{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def tier_header(data: dict[str, Any], name: str) -> str:
    return (f"From `{data.get('command', 'bench/run.py --' + name)}` on "
            f"{data.get('when', '(date not recorded)')}, at {data['machine'].get('versions', '?')} "
            f"([RESULTS-{name}.md](RESULTS-{name}.md)).\n")


def small_table(results: list[dict[str, Any]]) -> str:
    floor = next((r.get("reaction_median_ms") for r in results
                  if r["tool"] == "inotifywait + sh loop"), None)
    rows = ["| Tool | Reaction median (ms) | p99 (ms) | max (ms) | median / floor's | "
            "Start-up (s) | RSS (MiB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        med = r.get("reaction_median_ms")
        ratio = f"{med / floor:.2f}x" if med is not None and floor else "-"
        rows.append(f"| {r['tool']} | {fmt(med, '.2f')} | {fmt(r.get('reaction_p99_ms'), '.2f')} "
                    f"| {fmt(r.get('reaction_max_ms'), '.2f')} | {ratio} | "
                    f"{fmt(r.get('startup_s'), '.2f')} | {fmt(r.get('rss_mib'), '.1f')} |")
    return "\n".join(rows)


def scale_targets(full: list[dict[str, Any]], small: list[dict[str, Any]] | None,
                  huge: list[dict[str, Any]] | None) -> str:
    """Issue 14's targets, each from the tier it is about."""
    lines = ["| Target | Measured | Met |", "|---|---|:---:|"]

    def row(target: str, measured: str, ok: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if ok else '**no**'} |")

    def tool(results: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
        return next((r for r in results or [] if r["tool"] == name), {})

    dl = tool(huge, "DevLoop")
    a = dl.get("after_ready") or {}
    if a.get("reaction_p99_ms") is not None:
        row("1,000,000 files: reaction p99 < 10 ms for edits from READY on",
            f"{a['reaction_p99_ms']:.2f} ms", a["reaction_p99_ms"] < 10)
        row("1,000,000 files: 1.00 runs per edit", f"{a['runs_per_edit']:.2f}",
            a["runs_per_edit"] == 1.0)
        row("1,000,000 files: CPU after READY ≤ 3 s, then idle",
            f"{a['cpu_ready_to_quiet_s']:.2f} s", a["cpu_ready_to_quiet_s"] <= 3.0)
        row("1,000,000 files: RSS < 60 MiB", f"{a['rss_mib']:.1f} MiB", a["rss_mib"] < 60)
        fl = tool(huge, "inotifywait + sh loop").get("after_ready") or {}
        if fl.get("reaction_median_ms"):
            ratio = a["reaction_median_ms"] / fl["reaction_median_ms"]
            row("1,000,000 files: median reaction ≤ 1.75x the floor's (same run)",
                f"{a['reaction_median_ms']:.2f} vs {fl['reaction_median_ms']:.2f} ms: "
                f"{ratio:.2f}x", ratio <= 1.75)
    stall = dl.get("loop_stall")
    if stall:
        row("no loop callback longer than 20 ms (start-up to quiet, 1,000,000 files)",
            f"{stall['stalls']} over 20 ms", stall["stalls"] == 0)
    dl = tool(full, "DevLoop")
    if "rss_mib" in dl:
        row("100,000 files: RSS < 30 MiB", f"{dl['rss_mib']:.1f} MiB", dl["rss_mib"] < 30)
    for name, results in (("100,000 files", full), ("2,000 files", small)):
        dl, fl = tool(results, "DevLoop"), tool(results, "inotifywait + sh loop")
        if dl.get("reaction_median_ms") is None or not fl.get("reaction_median_ms"):
            continue
        ratio = dl["reaction_median_ms"] / fl["reaction_median_ms"]
        row(f"{name}: median reaction ≤ 1.75x the floor's (same run)",
            f"{dl['reaction_median_ms']:.2f} vs {fl['reaction_median_ms']:.2f} ms: {ratio:.2f}x",
            ratio <= 1.75)
        if results is small:
            row("2,000 files: reaction p99 < 3 ms", f"{dl['reaction_p99_ms']:.2f} ms "
                f"({dl.get('edits', '?')} edits)", dl["reaction_p99_ms"] < 3)
    return "\n".join(lines)


def tier_parts(results: list[dict[str, Any]]) -> list[str]:
    """RESULTS.md's view of the other tiers, from their last runs."""
    small, huge = load_tier("small"), load_tier("huge")
    parts = []
    if small:
        parts += ["## Small project tier (200 directories, 2,000 files)\n",
                  tier_header(small, "small"), small_table(small["results"]), ""]
    if huge:
        parts += ["## Monorepo tier (100,000 directories, 1,000,000 files), right after ready\n",
                  tier_header(huge, "huge"), after_ready_table(huge["results"]), ""]
    parts += ["## Scale targets (issue 14)\n",
              scale_targets(results, small["results"] if small else None,
                            huge["results"] if huge else None), ""]
    return parts


def report(
    results: list[dict[str, Any]],
    ctx: Ctx,
    machine: dict[str, str],
    rec_kind: str,
    notes: list[str],
    elapsed: float,
) -> str:
    s = ctx.scale
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(r.get("version", f"{r['tool']} (not run)") for r in results)
    full_parts = [
        "## Headline\n",
        headline(results, s),
        '\nStorm cells: changes missed / times the check ran. "Missed" counts changed files '
        "whose name never reached a check that started after the storm began (entr passes "
        "only the first name, so for entr it counts files written after its last run "
        'started). "still running": the tool was still starting checks when the wait '
        "ended.\n",
        "## DevLoop targets\n",
        targets(results, ctx.tree),
        "",
        *tier_parts(results),
    ]
    parts = [
        "# DevLoop benchmark results\n",
        f"Run `{' '.join(['python3', 'bench/run.py', *sys.argv[1:]])}` on {when}, "
        f"scale `{s.name}`, took {elapsed / 60:.1f} min. Every figure below was measured in "
        "that run; see bench/README.md for the method.\n",
        "## Machine\n",
        "\n".join(f"- {k}: {v}" for k, v in machine.items()),
        f"- recorder: {rec_kind}",
        f"- versions: {versions}\n",
        f"## Workload\n\n- tree: {s.dirs:,} directories and {s.files:,} `*.txt` files, plus "
        f"`node_modules/` with {s.nm_dirs:,} directories and {s.nm_files:,} files (ignored); "
        f"{ctx.tree.dirs:,} directories to watch counting the root\n"
        + ("" if s is HUGE else
           f"- reaction: {s.edits} single-file edits, one at a time\n"
           f"- idle window: {s.idle_s:.0f} s\n"
           f"- storm: {s.storm_files:,} files rewritten back to back; overflow storm: the same "
           f"with `fs.inotify.max_queued_events = {s.small_queue}` while the tool starts and "
           f"runs (restored afterwards); a tool is done when no check started for "
           f"{s.quiet_s} s, waited for at most {s.drain_max_s:.0f} s after the last write\n"),
        *(full_parts if s is FULL or s is QUICK else []),
        *(["## Reaction\n", small_table(results), ""] if s is SMALL else []),
        "## Right after ready\n",
        f"A fresh start of each tool; {AFTER_READY_EDITS} edits from the moment it is ready "
        "(the first at once); CPU from ready until no check started for "
        f"{s.quiet_s} s and the tool used < 2% CPU over a second.\n",
        after_ready_table(results),
        "",
        "## Per tool\n",
        details(results),
    ]
    if notes:
        parts += ["## Install notes\n", "\n".join(f"- {n}" for n in notes), ""]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small tree, few edits (CI smoke run)")
    ap.add_argument(
        "--huge",
        action="store_true",
        help="100,000 dirs / 1,000,000 files: only the pass right after ready (RESULTS-huge.md)",
    )
    ap.add_argument(
        "--small",
        action="store_true",
        help="200 dirs / 2,000 files: start-up and 200 edits only (RESULTS-small.md)",
    )
    ap.add_argument("--tools", default="",
                    help="comma-separated subset, e.g. devloop,entr (--huge: "
                    + ",".join(HUGE_TOOLS) + ")")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/devloop-bench"))
    ap.add_argument(
        "--output",
        type=Path,
        default=None,
        help="Markdown output (default bench/RESULTS.md, quick: RESULTS-quick.md)",
    )
    ap.add_argument("--no-install", action="store_true", help="do not apt/pip install peers")
    ap.add_argument(
        "--no-devloop-install", action="store_true", help="do not pip install -e this repository"
    )
    args = ap.parse_args(argv)
    if sys.platform != "linux":
        print("the benchmark needs Linux (inotify)", file=sys.stderr)
        return 2
    t_begin = time.monotonic()
    scale = HUGE if args.huge else SMALL if args.small else QUICK if args.quick else FULL
    out = args.output or BENCH_DIR / (
        "RESULTS.md" if scale is FULL else f"RESULTS-{scale.name}.md")
    notes = [] if args.no_install else install(args.no_devloop_install)
    args.workdir.mkdir(parents=True, exist_ok=True)
    recorder, rec_kind = build_recorder(args.workdir)
    tree = make_tree(args.workdir, scale, recorder)
    ctx = Ctx(workdir=args.workdir, tree=tree, recorder=recorder, scale=scale)
    wanted = {t.strip().lower() for t in args.tools.split(",") if t.strip()}
    if scale is HUGE and not wanted:
        wanted = set(HUGE_TOOLS)
    tools = [t for t in ALL_TOOLS if not wanted or any(w in t.name.lower() for w in wanted)]
    if os.geteuid() != 0:
        notes.append("not root: the overflow storm cannot lower max_queued_events")
    results: list[dict[str, Any]] = []
    for tool in tools:
        results.append(bench_tool(tool, ctx))
        (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    machine = machine_info(ctx)
    text = report(results, ctx, machine, rec_kind, notes, time.monotonic() - t_begin)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({
        "command": " ".join(["python3", "bench/run.py", *sys.argv[1:]]),
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine, "scale": asdict(scale), "results": results}, indent=1) + "\n")
    print(after_ready_table(results) if scale is HUGE else small_table(results)
          if scale is SMALL else headline(results, scale))
    log(f"wrote {out} in {(time.monotonic() - t_begin) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
