"""The results database, `.devloop/devloop.db`: SQLite in WAL mode.

The daemon (or `devloop run`) writes; `devloop status` reads at the same time.
Findings of a check are replaced file by file on each run, so fixed problems
disappear; old runs are pruned so the file stays small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    output TEXT NOT NULL
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
"""


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


@dataclass(frozen=True)
class CheckState:
    run: Run
    run_id: int
    findings: tuple[Finding, ...]


def _private_file(path: Path) -> None:
    """Create the file 0600 before SQLite does; a planted symlink is moved aside, not followed.

    SQLite gives the -wal and -shm files the database file's permissions.
    """
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.is_symlink():
            aside = p.with_name(f"{p.name}.symlink-{int(time.time())}")
            log.warning("%s is a symlink: moved aside to %s, not followed", p, aside.name)
            os.replace(p, aside)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)


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
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout)
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
    def _open_rw(cls, path: Path, busy_timeout: float) -> Store:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            (verdict,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {verdict}")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def record(self, run: Run, findings: Sequence[Finding]) -> int:
        """Store a run; its findings replace the check's earlier findings for the same files."""
        c = self.conn
        with c:
            c.execute("BEGIN IMMEDIATE")
            cur = c.execute(
                "INSERT INTO runs (check_name, started, duration, exit_code, outcome, files,"
                " output) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run.check, run.started, run.duration, run.exit_code, run.outcome,
                 None if run.files is None else json.dumps(run.files), run.output),
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
                        [(run.check, f) for f in scope],
                    )
                c.executemany(
                    "INSERT INTO findings (check_name, file, line, col, severity, code, message,"
                    " run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run.check, f.file, f.line, f.column, f.severity, f.code, f.message, run_id)
                     for f in findings],
                )
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
            c.executemany("DELETE FROM findings WHERE file = ?", [(f,) for f in files])

    def forget_checks_except(self, names: Iterable[str]) -> None:
        """A check removed from the config leaves no stale results behind."""
        keep = list(names)
        marks = ",".join("?" * len(keep))
        with self.conn as c:
            c.execute(f"DELETE FROM runs WHERE check_name NOT IN ({marks})", keep)
            c.execute(f"DELETE FROM findings WHERE check_name NOT IN ({marks})", keep)

    def latest(self) -> list[CheckState]:
        """The last run of each check and the check's current findings, by check name."""
        c = self.conn
        rows = c.execute(
            "SELECT r.id, r.check_name, r.started, r.duration, r.exit_code, r.outcome, r.files,"
            " r.output FROM runs r JOIN (SELECT check_name, MAX(id) AS id FROM runs"
            " GROUP BY check_name) last ON r.id = last.id ORDER BY r.check_name"
        ).fetchall()
        states = []
        for run_id, name, started, duration, exit_code, outcome, files, output in rows:
            found = tuple(
                Finding(file=f, line=ln, column=col, severity=sev, code=code, message=msg)
                for f, ln, col, sev, code, msg in c.execute(
                    "SELECT file, line, col, severity, code, message FROM findings"
                    " WHERE check_name = ? ORDER BY file, line, col", (name,)
                )
            )
            run = Run(check=name, started=started, duration=duration, exit_code=exit_code,
                      outcome=outcome, files=None if files is None else tuple(json.loads(files)),
                      output=output)
            states.append(CheckState(run=run, run_id=run_id, findings=found))
        return states
