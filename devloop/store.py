"""The results database, `.devloop/devloop.db`: SQLite in WAL mode.

The daemon (or `devloop run`) writes; `devloop status` reads at the same time.
Findings of a check are replaced file by file on each run, so fixed problems
disappear; old runs are pruned so the file stays small.

Besides runs and findings it holds what must survive a restart and what readers
need without asking the daemon: per check, counters of runs by outcome, the last
success and when the current failing streak began (`checks`); the daemon's live
state of each check, idle, queued or running (`check_state`); and the daemon
itself (`daemon`: its PID and up to when it has read the project's changes, for
`devloop status --wait`). A result and the state it leaves are one transaction,
so a reader never sees "idle" before the result that ended the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devloop import statedir
from devloop.errors import EX_CANTCREAT, DevloopError
from devloop.findings import Finding

log = logging.getLogger(__name__)

DB_NAME = "devloop.db"
KEEP_RUNS_PER_CHECK = 200
Outcome = Literal["pass", "fail", "error", "timeout", "cancelled"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    check_name TEXT NOT NULL,
    started REAL NOT NULL,
    duration REAL NOT NULL,
    exit_code INTEGER,
    outcome TEXT NOT NULL,
    files TEXT,
    output TEXT NOT NULL,
    covers_all INTEGER NOT NULL DEFAULT 0,
    counts TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_check ON runs (check_name, id);
CREATE TABLE IF NOT EXISTS findings (
    check_name TEXT NOT NULL,
    file TEXT NOT NULL,
    line INTEGER NOT NULL,
    col INTEGER,
    severity TEXT NOT NULL,
    code TEXT,
    message TEXT NOT NULL,
    run_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_by_file ON findings (check_name, file);
CREATE TABLE IF NOT EXISTS checks (
    check_name TEXT PRIMARY KEY,
    runs TEXT NOT NULL DEFAULT '{}',
    last_success REAL,
    failing_since REAL
);
CREATE TABLE IF NOT EXISTS check_state (
    check_name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    changed_at REAL
);
CREATE TABLE IF NOT EXISTS daemon (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    synced_at REAL,
    updated REAL NOT NULL
);
"""
# Columns added after the first release: an older database gains them on open.
ADDED_COLUMNS = {"covers_all": "INTEGER NOT NULL DEFAULT 0", "counts": "TEXT", "reason": "TEXT"}
FAILING: tuple[Outcome, ...] = ("fail", "error", "timeout")
State = Literal["idle", "queued", "running"]


@dataclass(frozen=True)
class Run:
    check: str
    started: float  # unix time
    duration: float  # seconds
    exit_code: int | None
    outcome: Outcome
    files: tuple[str, ...] | None  # None: the whole project
    output: str
    covers_all: bool = False  # it checked everything (no {files}): all its findings are new
    counts: dict[str, int] | None = None  # tests "passed", "failed", "errors", "skipped"
    reason: str | None = None  # a line or a few: why it failed, when findings do not say


@dataclass(frozen=True)
class CheckState:
    run: Run
    run_id: int
    findings: tuple[Finding, ...]
    leftover: int = 0  # errors from failing runs on files its last (passing) run did not check

    @property
    def failing(self) -> bool:
        return self.run.outcome in FAILING or self.leftover > 0


@dataclass(frozen=True)
class CheckTotals:
    """What survives a restart: runs by outcome, last success, start of the failing streak."""
    runs: dict[str, int]
    last_success: float | None
    failing_since: float | None


@dataclass(frozen=True)
class LiveState:
    """The daemon's view of a check: `changed_at` is the last change it saw that the check's
    patterns match (unix time), so a result that started before it is stale."""
    state: State
    since: float
    changed_at: float | None


@dataclass(frozen=True)
class DaemonRow:
    pid: int
    started: float
    synced_at: float | None  # every change made before this time has reached the scheduler
    updated: float


def _text(name: str) -> str:
    """A file name as SQLite can hold it: UTF-8 only, so a name in other bytes (surrogate
    escapes) is written, and looked up, with those bytes as \\xNN."""
    if name.isascii():
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _private_file(path: Path) -> None:
    """Create the file 0600 before SQLite does; a planted symlink is moved aside, not followed,
    and a file that is not ours (statedir's rules) is refused.

    SQLite gives the -wal and -shm files the database file's permissions.
    """
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.is_symlink():
            aside = p.with_name(f"{p.name}.symlink-{int(time.time())}")
            log.warning("%s is a symlink: moved aside to %s, not followed", p, aside.name)
            os.replace(p, aside)
    for p in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.close(statedir.open_private(p, os.O_RDONLY))
    os.close(statedir.open_private(path, os.O_CREAT | os.O_RDWR))


def _readonly_uri(path: Path) -> str:
    """A `file:` URI that reads `path` and can create nothing, not even through a symlink.

    The path is quoted, so a `#` or `?` in it cannot cut the parameters off. SQLite
    would create -wal and -shm files even for mode=ro: without them (no writer has the
    database open) the file is read as immutable, which creates nothing.
    """
    if os.path.islink(path.parent):
        raise sqlite3.OperationalError(f"{path.parent} is a symlink: refusing to follow it")
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            if p == path:
                raise sqlite3.OperationalError(f"{path} does not exist") from None
            continue
        if not stat.S_ISREG(st.st_mode):
            raise sqlite3.OperationalError(f"{p} is not a regular file (a symlink?): "
                                           "refusing to open it")
    live = os.path.lexists(f"{path}-wal") and os.path.lexists(f"{path}-shm")
    params = "mode=ro" if live else "mode=ro&immutable=1"
    return f"file:{urllib.parse.quote(os.fspath(path))}?{params}"


class Store:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, state_dir: Path, *, readonly: bool = False, busy_timeout: float = 5.0
             ) -> Store:
        """busy_timeout: how long a write waits for another process's lock (the daemon's
        loop must not wait long: it keeps the run and retries later instead)."""
        path = state_dir / DB_NAME
        if readonly:
            conn = sqlite3.connect(_readonly_uri(path), uri=True, timeout=busy_timeout)
            return cls(conn)
        _private_file(path)
        try:
            return cls._open_rw(path, busy_timeout)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            log.error("results database %s is unusable (%s): moved aside to %s, starting afresh",
                      path, exc, aside.name)
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            _private_file(path)
            return cls._open_rw(path, busy_timeout)

    @classmethod
    def open_writer(cls, state_dir: Path, *, busy_timeout: float = 5.0) -> Store:
        """Store.open for the daemon and `devloop run`: a failure is one line, exit 73."""
        try:
            return cls.open(state_dir, busy_timeout=busy_timeout)
        except (sqlite3.Error, OSError) as exc:
            raise DevloopError(f"cannot open the results database in {state_dir}: {exc}",
                               EX_CANTCREAT) from None

    @classmethod
    def _open_rw(cls, path: Path, busy_timeout: float) -> Store:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            _add_columns(conn)
            (verdict,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {verdict}")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Several reads that see one moment: a result and the state it left, together."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    def record(self, run: Run, findings: Sequence[Finding], *, counted: bool = True) -> int:
        """Store a run; its findings replace the check's earlier findings for the same files.

        counted=False: a verdict devloop settles itself (its files were deleted), not a run
        of the check, so the check's counters do not move.
        """
        c = self.conn
        with c:
            c.execute("BEGIN IMMEDIATE")
            cur = c.execute(
                "INSERT INTO runs (check_name, started, duration, exit_code, outcome, files,"
                " output, covers_all, counts, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.check, run.started, run.duration, run.exit_code, run.outcome,
                 None if run.files is None else json.dumps(run.files), run.output,
                 int(run.covers_all), None if run.counts is None else json.dumps(run.counts),
                 run.reason),
            )
            run_id = cur.lastrowid
            assert run_id is not None
            if run.outcome in ("pass", "fail"):
                if run.files is None or run.covers_all:
                    c.execute("DELETE FROM findings WHERE check_name = ?", (run.check,))
                else:
                    scope = set(run.files) | {f.file for f in findings}
                    c.executemany(
                        "DELETE FROM findings WHERE check_name = ? AND file = ?",
                        [(run.check, _text(f)) for f in scope],
                    )
                c.executemany(
                    "INSERT INTO findings (check_name, file, line, col, severity, code, message,"
                    " run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run.check, _text(f.file), f.line, f.column, f.severity, f.code,
                      f.message, run_id) for f in findings],
                )
            _count(c, run, counted, still_failing=_leftover(c, run) > 0)
            c.execute(
                "DELETE FROM runs WHERE check_name = ? AND id <= ("
                " SELECT id FROM runs WHERE check_name = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (run.check, run.check, KEEP_RUNS_PER_CHECK),
            )
        return run_id

    def forget_files(self, files: Iterable[str]) -> None:
        """Files that no longer exist have no findings (one transaction: one commit)."""
        with self.conn as c:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("DELETE FROM findings WHERE file = ?", [(_text(f),) for f in files])

    def forget_checks_except(self, names: Iterable[str]) -> None:
        """A check removed from the config leaves no stale results behind."""
        keep = list(names)
        marks = ",".join("?" * len(keep))
        with self.conn as c:
            for table in ("runs", "findings", "checks", "check_state"):
                c.execute(f"DELETE FROM {table} WHERE check_name NOT IN ({marks})", keep)

    def checks_with_findings(self, files: Iterable[str]) -> set[str]:
        """The checks that have findings in these files."""
        files = [_text(f) for f in files]
        found: set[str] = set()
        for i in range(0, len(files), 500):  # below SQLite's limit on bound variables
            chunk = files[i:i + 500]
            found.update(name for (name,) in self.conn.execute(
                "SELECT DISTINCT check_name FROM findings WHERE file IN"
                f" ({','.join('?' * len(chunk))})", chunk))
        return found

    def files_with_findings_under(self, marks: Iterable[str]) -> list[str]:
        """The files with findings below each directory "dir/" ("/": the root), and those
        a failing check's last run was given (a failure without findings may go with its
        files too); one pass over each, however many directories (an overflow marks
        thousands)."""
        prefixes = tuple(marks)
        if "/" in prefixes:
            prefixes = ("",)
        files = {f for (f,) in self.conn.execute("SELECT DISTINCT file FROM findings")}
        for (given,) in self.conn.execute(
                "SELECT r.files FROM runs r JOIN (SELECT check_name, MAX(id) AS id FROM runs"
                " GROUP BY check_name) last ON r.id = last.id WHERE r.files IS NOT NULL"
                f" AND r.outcome IN ({','.join('?' * len(FAILING))})", FAILING):
            files.update(json.loads(given))
        return [f for f in files if f.startswith(prefixes)]

    def outcomes_gone_with(self, gone: Sequence[str], had_findings: set[str],
                           exists: Callable[[str], bool]) -> list[Run]:
        """After deleted files' findings were forgotten: the failing checks whose failure
        went with them, each as a settled pass that says why. Either all the findings of a
        failing run were in deleted files, or every file its run checked is gone."""
        settled = []
        for st in self.latest():
            r = st.run
            if not (st.failing or r.check in had_findings) or st.findings:
                continue
            if (r.check in had_findings and r.outcome in ("fail", "pass")) or (
                    r.files and not r.covers_all and not any(exists(f) for f in r.files)):
                settled.append(Run(
                    check=r.check, started=time.time(), duration=0.0, exit_code=None,
                    outcome="pass", files=(), output="",
                    reason="devloop: its failure went with the deleted "
                    + ", ".join(sorted(gone)[:5]) + (", …" if len(gone) > 5 else "")))
        return settled

    def totals(self) -> dict[str, CheckTotals]:
        """Per check: its run counters, last success and failing streak, kept across restarts."""
        return {
            name: CheckTotals(runs=json.loads(runs), last_success=last_success,
                              failing_since=failing_since)
            for name, runs, last_success, failing_since in self.conn.execute(
                "SELECT check_name, runs, last_success, failing_since FROM checks")
        }

    def publish(self, states: dict[str, LiveState], *, pid: int, started: float,
                synced_at: float | None) -> None:
        """The daemon's live state of every check, replaced in one transaction."""
        c = self.conn
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM check_state")
            c.executemany(
                "INSERT INTO check_state (check_name, state, since, changed_at)"
                " VALUES (?, ?, ?, ?)",
                [(name, s.state, s.since, s.changed_at) for name, s in states.items()])
            c.execute(
                "INSERT OR REPLACE INTO daemon (id, pid, started, synced_at, updated)"
                " VALUES (1, ?, ?, ?, ?)", (pid, started, synced_at, time.time()))

    def unpublish(self) -> None:
        """The daemon stops: nobody keeps the live state true any more."""
        with self.conn as c:
            c.execute("DELETE FROM check_state")
            c.execute("DELETE FROM daemon")

    def live(self) -> tuple[DaemonRow | None, dict[str, LiveState]]:
        """What the daemon last published (readers check that it still runs)."""
        c = self.conn
        row = c.execute("SELECT pid, started, synced_at, updated FROM daemon").fetchone()
        states = {
            name: LiveState(state=state, since=since, changed_at=changed_at)
            for name, state, since, changed_at in c.execute(
                "SELECT check_name, state, since, changed_at FROM check_state")
        }
        return (None if row is None else DaemonRow(*row)), states


    def latest(self) -> list[CheckState]:
        """The last run of each check and the check's current findings, by check name."""
        c = self.conn
        have = _columns(c)
        extra = ", ".join(col if col in have else "NULL" for col in ADDED_COLUMNS)
        rows = c.execute(
            "SELECT r.id, r.check_name, r.started, r.duration, r.exit_code, r.outcome, r.files,"
            f" r.output, {extra} FROM runs r JOIN (SELECT check_name, MAX(id) AS id FROM runs"
            " GROUP BY check_name) last ON r.id = last.id ORDER BY r.check_name"
        ).fetchall()
        states = []
        for (run_id, name, started, duration, exit_code, outcome, files, output, covers_all,
             counts, reason) in rows:
            found = tuple(
                Finding(file=f, line=ln, column=col, severity=sev, code=code, message=msg)
                for f, ln, col, sev, code, msg in c.execute(
                    "SELECT file, line, col, severity, code, message FROM findings"
                    " WHERE check_name = ? ORDER BY file, line, col", (name,)
                )
            )
            run = Run(check=name, started=started, duration=duration, exit_code=exit_code,
                      outcome=outcome, files=None if files is None else tuple(json.loads(files)),
                      output=output, covers_all=bool(covers_all),
                      counts=None if counts is None else json.loads(counts), reason=reason)
            states.append(CheckState(run=run, run_id=run_id, findings=found,
                                     leftover=_leftover(c, run)))
        return states


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(runs)")}


def _add_columns(conn: sqlite3.Connection) -> None:
    """A database from an older devloop gains the new columns, and its counters are
    rebuilt once from the runs it kept."""
    have = _columns(conn)
    for col, decl in ADDED_COLUMNS.items():
        if col not in have:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")
    if conn.execute("SELECT 1 FROM checks LIMIT 1").fetchone() is None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for name, started, duration, outcome in conn.execute(
                    "SELECT check_name, started, duration, outcome FROM runs ORDER BY id"
            ).fetchall():
                _count(conn, Run(check=name, started=started, duration=duration,
                                 exit_code=None, outcome=outcome, files=None, output=""), True)


def _leftover(conn: sqlite3.Connection, run: Run) -> int:
    """After a pass on some files: the errors that failing runs found in the check's other
    files, still there. The check still fails (its last run alone would say it passes)."""
    if run.outcome != "pass" or run.files is None or run.covers_all:
        return 0
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM findings f JOIN runs r ON r.id = f.run_id WHERE f.check_name = ?"
        " AND f.severity = 'error' AND r.outcome = 'fail'", (run.check,)).fetchone()
    return int(n)


def _count(conn: sqlite3.Connection, run: Run, counted: bool, *, still_failing: bool = False
           ) -> None:
    """Move the check's counters, last success and failing streak by one result.

    The streak (failing_since not null) is what says a check fails, to every reader."""
    row = conn.execute("SELECT runs, last_success, failing_since FROM checks"
                       " WHERE check_name = ?", (run.check,)).fetchone()
    runs, last_success, failing_since = (json.loads(row[0]), row[1], row[2]) if row else (
        {}, None, None)
    if counted:
        runs[run.outcome] = runs.get(run.outcome, 0) + 1
    ended = round(run.started + run.duration, 3)
    if run.outcome == "pass" and not still_failing:
        last_success, failing_since = ended, None
    elif run.outcome in FAILING and failing_since is None:
        failing_since = ended
    conn.execute("INSERT OR REPLACE INTO checks (check_name, runs, last_success, failing_since)"
                 " VALUES (?, ?, ?, ?)", (run.check, json.dumps(runs), last_success,
                                          failing_since))
