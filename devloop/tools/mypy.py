"""mypy: the program as the project configures it, every run, through a dmypy server.

What is checked: what the project's mypy configuration names (`files`, `packages`
or `modules` in mypy.ini, .mypy.ini, pyproject.toml's [tool.mypy] or setup.cfg's
[mypy], found as mypy finds it), else the project's top-level packages and
modules (under src/ for a src layout). Never the changed files alone, and never
every .py of the tree: a stub beside its module or several examples/*/setup.py
make mypy stop with "Duplicate module named", and a change breaks other files.
So every run reports every file a change breaks.

How: under the daemon (`servers.enable()`), through mypy's own daemon, dmypy,
whose server the DevLoop daemon owns: started on first use, kept between runs,
restarted when it died or when the mypy configuration or the venv changed,
stopped with the daemon. It is the daemon's direct child, in its own session,
with PR_SET_PDEATHSIG=SIGKILL (so even a `kill -9` of the daemon takes it along)
and listed in `.devloop/checks.pids` (so a restarted daemon kills one that
outlived its parent anyway). Its status file lives in the tool cache directory,
outside the project. Elsewhere (`devloop run`, the commit hook) plain mypy runs,
with its incremental cache in that same directory.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import ctypes
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from devloop.findings import Finding
from devloop.reaper import LIVE_LEADERS, GroupLedger
from devloop.tools import Adapter, Finished, Invocation, Report, first_lines, relative

log = logging.getLogger(__name__)

INI_NAMES = ("mypy.ini", ".mypy.ini")
SHARED_NAMES = ("pyproject.toml", "setup.cfg")
TARGET_KEYS = ("files", "packages", "modules")
# Output we can read whatever the project's configuration says; later flags win.
OUTPUT_FLAGS = ("--show-column-numbers", "--no-error-summary", "--no-pretty",
                "--no-color-output", "--show-error-codes", "--hide-error-context")
# Options whose value is the next argument (only those that may look like a path).
VALUE_OPTIONS = frozenset({
    "--config-file", "--cache-dir", "--python-executable", "--custom-typeshed-dir",
    "--exclude", "--junit-xml", "--shadow-file", "--python-version", "--platform",
    "--always-true", "--always-false", "--enable-error-code", "--disable-error-code",
    "--html-report", "--txt-report", "--xml-report", "--linecount-report",
    "--lineprecision-report", "--any-exprs-report", "--cobertura-xml-report",
    "--linecoverage-report", "--memory-xml-report", "--xslt-html-report",
    "--xslt-txt-report", "--package-root", "--untyped-calls-exclude",
})
TARGET_OPTIONS = frozenset({"-p", "--package", "-m", "--module", "-c", "--command"})
# Not the project's program: setuptools' flat-layout discovery leaves these out too.
NOT_PACKAGES = frozenset({
    "tests", "test", "docs", "doc", "documentation", "examples", "example", "scripts",
    "script", "tools", "util", "utils", "python", "build", "dist", "venv", "env", "site",
    "benchmarks", "benchmark", "bench", "exercises", "exercise", "htmlcov", "debian",
    "contrib", "manpages", "templates", "tasks", "fixtures",
})
NOT_MODULES = frozenset({
    "setup", "conftest", "test", "tests", "example", "examples", "build", "toxfile",
    "noxfile", "pavement", "dodo", "tasks", "fabfile", "conanfile", "manage", "benchmark",
    "benchmarks", "exercise", "exercises", "docs", "doc",
})
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0
MAX_NOTES = 3


# -- what to check ----------------------------------------------------------------------
@dataclass(frozen=True)
class MypyConfig:
    path: Path | None  # the file mypy reads, None: none (mypy's defaults)
    names_targets: bool  # it says what to check (files / packages / modules)
    digest: str  # of its mypy sections: a change restarts the server


def _ini_sections(path: Path, *, shared: bool) -> dict[str, dict[str, str]] | None:
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    sections = {s: dict(parser[s]) for s in parser.sections()
                if s == "mypy" or s.startswith("mypy-")}
    if shared and "mypy" not in sections:
        return None  # setup.cfg without [mypy]: mypy looks further
    return sections


def _toml_section(path: Path) -> dict[str, object] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    tool = data.get("tool")
    section = tool.get("mypy") if isinstance(tool, dict) else None
    return section if isinstance(section, dict) else None


def _read_config(path: Path) -> tuple[dict[str, object], str] | None:
    """mypy's part of a config file, and a digest of it; None: mypy would skip the file."""
    if not path.is_file():
        return None
    if path.name == "pyproject.toml":
        table = _toml_section(path)
        if table is None:
            return None
        main: dict[str, object] = table
        everything: object = table
    else:
        sections = _ini_sections(path, shared=path.name == "setup.cfg")
        if sections is None:
            return None
        main = dict(sections.get("mypy", {}))
        everything = sections
    digest = hashlib.sha256(json.dumps(everything, sort_keys=True, default=str).encode())
    return main, digest.hexdigest()


def find_config(root: Path, flags: Sequence[str] = ()) -> MypyConfig:
    """The configuration mypy will use, looked up the way mypy does: `--config-file`, else
    mypy.ini, .mypy.ini, pyproject.toml, setup.cfg here and in the parents up to the
    repository's top (.git / .hg), else the user's own."""
    given = _option_value(flags, "--config-file")
    if given is not None:
        candidates = [root / given]
    else:
        candidates = []
        here = root.resolve()
        while True:
            candidates += [here / n for n in (*INI_NAMES, *SHARED_NAMES)]
            if any((here / vcs).exists() for vcs in (".git", ".hg")) or here.parent == here:
                break
            here = here.parent
        xdg = os.environ.get("XDG_CONFIG_HOME")
        candidates += [Path(p).expanduser() for p in
                       ([os.path.join(xdg, "mypy/config")] if xdg else [])
                       + ["~/.config/mypy/config", "~/.mypy.ini"]]
    for path in candidates:
        found = _read_config(path)
        if found is not None:
            main, digest = found
            names = any(main.get(k) for k in TARGET_KEYS)
            return MypyConfig(path=path, names_targets=names, digest=digest)
    return MypyConfig(path=None, names_targets=False, digest="")


def _option_value(flags: Sequence[str], option: str) -> str | None:
    for i, flag in enumerate(flags):
        if flag == option and i + 1 < len(flags):
            return flags[i + 1]
        if flag.startswith(option + "="):
            return flag.split("=", 1)[1]
    return None


def default_targets(root: Path) -> list[str]:
    """The project's top-level packages and modules (under src/ in a src layout)."""
    base = root / "src" if (root / "src").is_dir() else root
    prefix = "src/" if base != root else ""
    packages, modules = [], []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            if (name.isidentifier() and name.lower() not in NOT_PACKAGES
                    and any(os.path.isfile(os.path.join(entry.path, f"__init__.{ext}"))
                            for ext in ("py", "pyi"))):
                packages.append(prefix + name)
        elif name.endswith((".py", ".pyi")) and entry.is_file(follow_symlinks=False):
            stem = name.rsplit(".", 1)[0]
            if stem.isidentifier() and stem.lower() not in NOT_MODULES \
                    and not stem.startswith(("_", "test_")) and not stem.endswith("_test"):
                modules.append(prefix + name)
    # a stub beside its module is the same module: give mypy one of them (it prefers the stub)
    stems = {m.rsplit(".", 1)[0] for m in modules if m.endswith(".pyi")}
    modules = [m for m in modules if not (m.endswith(".py") and m[:-3] in stems)]
    return packages + modules


def _user_targets(args: Sequence[str], root: Path) -> bool:
    """Does the check's own command already say what to check?"""
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in TARGET_OPTIONS or any(arg.startswith(o + "=") for o in TARGET_OPTIONS
                                        if o.startswith("--")):
            return True
        if arg in VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-") and os.path.exists(root / arg):
            return True
    return False


@dataclass(frozen=True)
class Command:
    """A check's mypy command taken apart: how to start mypy and dmypy, and the flags."""

    mypy: tuple[str, ...]  # ("mypy",) or ("python3", "-m", "mypy")
    dmypy: tuple[str, ...] | None  # None: no dmypy next to that mypy
    flags: tuple[str, ...]  # options (and targets) the check's command gives
    user_targets: bool

    @classmethod
    def parse(cls, inv: Invocation) -> Command:
        argv = list(inv.argv)
        python_m = (len(argv) >= 3 and argv[1] == "-m"
                    and os.path.basename(argv[0]).startswith("python"))  # not `mypy -m mod`
        n = 3 if python_m else 1
        head, rest = tuple(argv[:n]), argv[n:]
        files = set(inv.files) | {f"./{f}" for f in inv.files if f.startswith("-")}
        # `{files}` became the changed files: mypy checks the program instead
        flags = tuple(a for a in rest if a not in files)
        return cls(mypy=head, dmypy=_dmypy_for(head, inv), flags=flags,
                   user_targets=_user_targets(flags, inv.root))


def _dmypy_for(mypy: tuple[str, ...], inv: Invocation) -> tuple[str, ...] | None:
    if len(mypy) == 3:  # python -m mypy
        return (mypy[0], "-m", "mypy.dmypy")
    exe = mypy[0]
    if os.path.basename(exe) == "dmypy":
        return (exe,)
    if "/" in exe:
        sibling = os.path.join(os.path.dirname(exe), "dmypy")
        full = sibling if os.path.isabs(sibling) else os.path.join(inv.root, sibling)
        return (sibling,) if os.access(full, os.X_OK) else None
    found = shutil.which("dmypy", path=inv.env.get("PATH"))
    return (found,) if found else None


# -- reading its output -------------------------------------------------------------------
_MESSAGE = re.compile(
    r"^(?P<path>[^:\n]+?):(?:(?P<line>\d+):(?:(?P<col>\d+):)?)?\s(?P<sev>error|warning|note):"
    r"\s?(?P<msg>.*?)(?:\s\s\[(?P<code>[\w-]+)\])?$")


def parse_output(root: Path, text: str) -> tuple[list[Finding], list[str]]:
    """Findings from mypy's `file:line:col: error: message  [code]` lines, and the lines
    that say what stopped mypy (an error with no line: a duplicate module, a bad option).

    A note on the same line as the error before it is part of that error (appended to its
    message); another note with a line is a finding of its own (reveal_type); a note with
    no line (about the configuration) is dropped."""
    found: list[Finding] = []
    fatal: list[str] = []
    last: Finding | None = None
    notes = 0
    for raw in text.splitlines():
        m = _MESSAGE.match(raw.rstrip())
        if m is None:
            continue
        rel = relative(root, m["path"])
        sev, msg, line = m["sev"], m["msg"].strip(), m["line"]
        if line is None:
            if sev == "error":
                fatal.append(raw.strip())
            continue
        if rel is None:
            continue
        col = int(m["col"]) if m["col"] else None
        if sev == "note" and last is not None and (rel, int(line)) == (last.file, last.line):
            if notes < MAX_NOTES:
                last = Finding(file=last.file, line=last.line, column=last.column,
                               severity=last.severity, code=last.code,
                               message=f"{last.message} (note: {msg})")
                found[-1] = last
            notes += 1
            continue
        f = Finding(file=rel, line=int(line), column=col, severity=sev, code=m["code"],
                    message=msg)
        found.append(f)
        last, notes = (f, 0) if sev != "note" else (None, 0)
    return found, fatal


# -- the dmypy server ---------------------------------------------------------------------
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> None:
    """In the forked child, before exec: SIGKILL when the daemon dies, even by SIGKILL."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _venv_state(exe: str, root: Path, env: dict[str, str]) -> list[object]:
    """What changes when packages are installed into (or removed from) the tool's venv."""
    path = exe if "/" in exe else shutil.which(exe, path=env.get("PATH")) or exe
    full = Path(root, path)
    venv = full.parent.parent
    state: list[object] = [str(full)]
    site = map(Path, glob.glob(str(venv / "lib/python*/site-packages")))
    for p in [full, venv / "pyvenv.cfg", *site]:
        try:
            st = p.stat()
        except OSError:
            continue
        state.append((str(p), st.st_ino, st.st_mtime_ns))
    return state


def fingerprint(root: Path, cmd: Command, env: dict[str, str]) -> str:
    """The mypy configuration, the venv and the environment: a change restarts the server."""
    assert cmd.dmypy is not None
    config = find_config(root, cmd.flags)
    data = [str(config.path), config.digest, _venv_state(cmd.dmypy[0], root, env),
            sorted(env.items()), cmd.dmypy, cmd.flags]
    return hashlib.sha256(json.dumps(data, default=str).encode()).hexdigest()


class Server:
    """One dmypy server for one project and one set of flags."""

    def __init__(self, root: Path, cache: Path, cmd: Command, flags: Sequence[str]) -> None:
        self.root = root
        self.cmd = cmd
        self.flags = tuple(flags)
        key = hashlib.sha256(json.dumps([str(root), cmd.dmypy, self.flags]).encode())
        self.status_file = cache / f"dmypy-{key.hexdigest()[:16]}.json"
        self.log_file = self.status_file.with_suffix(".log")
        self.proc: asyncio.subprocess.Process | None = None
        self.fingerprint: str | None = None
        self.failed: str | None = None  # why it could not start with this fingerprint
        self.seen: dict[str, tuple[int, int, bytes]] = {}  # see same_second_edits()

    def same_second_edits(self, root: Path, files: Sequence[str]) -> list[str]:
        """Changed files this server would take for unchanged, and note what it will see.

        dmypy compares whole-second mtimes and sizes: a file rewritten within the second
        of the version it last read, at the same size, looks unchanged to it (and stays
        wrong for ever). Such a file changed (inotify says so) with the same second and
        size as at the previous run, but other content."""
        missed = []
        recent = int(time.time()) - 1  # an older mtime second can never be written again
        for f in files:
            try:
                path = root / f
                st = path.stat()
                digest = (hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
                          if int(st.st_mtime) >= recent else b"")
            except OSError:
                self.seen.pop(f, None)
                continue
            now = (int(st.st_mtime), st.st_size, digest)
            before = self.seen.get(f)
            if before is not None and before[:2] == now[:2] and before[2] != digest:
                missed.append(f)
            self.seen[f] = now
        return missed

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def ensure(self, env: dict[str, str], ledger: GroupLedger | None) -> bool:
        """A server that is up with the current configuration; False: none could start."""
        now = fingerprint(self.root, self.cmd, env)
        if self.alive and now == self.fingerprint:
            return True
        if self.failed is not None and now == self.fingerprint:
            return False  # already failed with this configuration: plain mypy meanwhile
        if self.alive:
            log.info("mypy configuration or venv changed: restarting the dmypy server")
            await self.stop(ledger)
        elif self.proc is not None:
            log.warning("the dmypy server exited (%s): starting a new one", self.proc.returncode)
            self._forget(ledger)
        self.fingerprint = now
        self.failed = await self._start(env, ledger)
        if self.failed is not None:
            log.warning("cannot start the dmypy server, running plain mypy instead: %s",
                        self.failed)
        return self.failed is None

    async def _start(self, env: dict[str, str], ledger: GroupLedger | None) -> str | None:
        assert self.cmd.dmypy is not None
        self._clean_stale()
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd.dmypy, "--status-file", str(self.status_file), "daemon", "--",
                *self.flags, cwd=self.root, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=fd, stderr=fd, start_new_session=True,
                preexec_fn=functools.partial(_die_with, os.getpid()))
        except OSError as exc:
            return f"cannot run {self.cmd.dmypy[0]}: {exc.strerror}"
        finally:
            os.close(fd)
        proc = self.proc
        LIVE_LEADERS.add(proc.pid)  # reaper.reap_orphans() must leave it alone
        if ledger is not None:
            ledger.add(proc.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            if proc.returncode is not None:
                self._forget(ledger)
                tail = first_lines(self._log_tail()) or f"exit {proc.returncode}"
                return f"it exited at once: {tail}"
            if self._status_pid() == proc.pid:
                log.info("dmypy server started (pid %d) for %s", proc.pid, self.root)
                return None
            await asyncio.sleep(0.02)
        await self.stop(ledger)
        return f"no status file after {START_TIMEOUT_S:g}s"

    def _status(self) -> dict[str, object]:
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _status_pid(self) -> int | None:
        pid = self._status().get("pid")
        return pid if isinstance(pid, int) else None

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _clean_stale(self) -> None:
        """What a server killed without warning left: its status file and socket."""
        name = self._status().get("connection_name")
        if isinstance(name, str) and os.path.basename(name) == "dmypy.sock":
            with contextlib.suppress(OSError):
                os.unlink(name)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(name))
        with contextlib.suppress(FileNotFoundError):
            self.status_file.unlink()

    def _forget(self, ledger: GroupLedger | None) -> None:
        if self.proc is not None:
            LIVE_LEADERS.discard(self.proc.pid)
            if ledger is not None:
                ledger.remove(self.proc.pid)

    async def stop(self, ledger: GroupLedger | None) -> None:
        """SIGINT (it removes its status file and socket), SIGKILL if it does not go."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it started goes with it
        self._forget(ledger)
        self._clean_stale()
        self.proc = None
        log.info("dmypy server stopped (pid %d)", proc.pid)


class Servers:
    """The dmypy servers of a daemon, one per project and set of flags."""

    def __init__(self) -> None:
        self.enabled = False
        self.ledger: GroupLedger | None = None
        self._servers: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Server] = {}

    def enable(self, ledger: GroupLedger | None = None) -> None:
        """Called by the long-lived daemon: mypy runs go through dmypy from now on."""
        self.enabled = True
        self.ledger = ledger

    def get(self, root: Path, cache: Path, cmd: Command, flags: Sequence[str]) -> Server:
        assert cmd.dmypy is not None
        key = (str(root), cmd.dmypy, tuple(flags))
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = Server(root, cache, cmd, flags)
        return server

    async def stop(self) -> None:
        """Stop every server (the daemon is stopping); plain mypy from then on."""
        self.enabled = False
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(s.stop(self.ledger) for s in servers))


servers = Servers()


# -- the adapter --------------------------------------------------------------------------
class Mypy(Adapter):
    name = "mypy"
    executables: ClassVar[tuple[str, ...]] = ("mypy",)
    modules: ClassVar[tuple[str, ...]] = ("mypy",)
    whole_program = True

    async def prepare(self, inv: Invocation) -> None:
        cmd = Command.parse(inv)
        targets: list[str] = []
        if not cmd.user_targets and not find_config(inv.root, cmd.flags).names_targets:
            targets = default_targets(inv.root)
            if not targets:
                raise ValueError(
                    "nothing to check: the mypy configuration names no files or packages "
                    "and the project has no top-level package; set `files` in [tool.mypy]")
        flags = [*cmd.flags, *OUTPUT_FLAGS]
        if servers.enabled and cmd.dmypy is not None and os.path.basename(cmd.mypy[0]) != "dmypy":
            server_flags = [f for f in flags if f not in ("--no-incremental", "--incremental")]
            server = servers.get(inv.root, inv.cache_dir, cmd, server_flags)
            missed = server.same_second_edits(inv.root, inv.files)
            if missed and server.alive:
                log.info("%s changed within the second dmypy last read it, at the same size: "
                         "restarting the dmypy server so it reads it again", missed[0])
                await server.stop(servers.ledger)
            if await server.ensure(inv.env, servers.ledger):
                inv.argv = [*cmd.dmypy, "--status-file", str(server.status_file), "run", "--",
                            *server_flags, *targets]
                return
        inv.argv = [*cmd.mypy, *flags, *targets]

    def parse(self, inv: Invocation, done: Finished) -> Report:
        found, fatal = parse_output(inv.root, done.stdout.text)
        if done.exit_code == 0:
            return Report(findings=found)
        errors = [f for f in found if f.severity == "error"]
        if done.exit_code == 1 and errors:
            files = len({f.file for f in errors})
            return Report(findings=found, reason=f"{len(errors)} errors in {files} files")
        # exit 2 (or 1 with no error line): mypy did not check the program
        said = fatal or [line for line in (done.stderr.text + "\n" + done.stdout.text)
                         .splitlines() if line.strip()]
        return Report(findings=found, outcome="error",
                      reason=first_lines("\n".join(said[-3:])) or f"exit {done.exit_code}")


ADAPTER = Mypy()
