"""The daemon's journal: one sqlite3 row per input pod5 file, in WAL mode.

States::

    pending ──> running ──> done
       ^           │
       └───────────┘ (abandoned on SIGTERM, or found 'running' after a crash)
    quarantined      (corrupt input; reason recorded; re-queued if the file changes)

A file becomes ``done`` only after its output has been renamed to its final name
and synced to disk, so on restart ``done`` files are never redone and anything
else is redone from scratch. Every change is one committed transaction with
``synchronous=FULL``, so a power cut loses at most the change being made. Paths
are stored relative to the watched folder.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STATES = ("pending", "running", "done", "quarantined")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'quarantined')),
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    expected_reads INTEGER,
    reads INTEGER NOT NULL DEFAULT 0,
    failed_reads INTEGER NOT NULL DEFAULT 0,
    bases INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL
);
CREATE INDEX IF NOT EXISTS files_state ON files (state, first_seen);
"""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One journal row."""

    path: str
    state: str
    size: int
    mtime_ns: int
    expected_reads: int | None
    reads: int
    failed_reads: int
    bases: int
    samples: int
    output: str | None
    reason: str | None
    attempts: int
    crashes: int
    first_seen: float
    started: float | None
    finished: float | None
    seconds: float | None


_COLUMNS = ", ".join(FileEntry.__slots__)  # type: ignore[attr-defined]


class Journal:
    """The sqlite3 journal of input files.

    Parameters
    ----------
    path : Path
        Database file (created with its folder if missing).

    Notes
    -----
    One connection, used by the daemon's main thread only; other threads read
    the counters the service publishes instead.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------

    def get(self, path: str) -> FileEntry | None:
        """The row for ``path`` or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return FileEntry(*row) if row else None

    def entries(self, state: str | None = None) -> Iterator[FileEntry]:
        """All rows (optionally in one state), oldest first."""
        if state is None:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM files ORDER BY first_seen, path")
        else:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE state = ? "
                                   "ORDER BY first_seen, path", (state,))
        for row in cur.fetchall():
            yield FileEntry(*row)

    def next_pending(self) -> FileEntry | None:
        """The oldest pending file, or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE state = 'pending' "
                               "ORDER BY first_seen, path LIMIT 1").fetchone()
        return FileEntry(*row) if row else None

    def counts(self) -> dict[str, int]:
        """Number of files per state (every state present)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state"):
            out[state] = int(n)
        return out

    def totals(self) -> dict[str, int]:
        """Reads, failed reads, bases and samples summed over done files."""
        row = self._db.execute("SELECT COALESCE(SUM(reads), 0), COALESCE(SUM(failed_reads), 0), "
                               "COALESCE(SUM(bases), 0), COALESCE(SUM(samples), 0) "
                               "FROM files WHERE state = 'done'").fetchone()
        return {"reads": int(row[0]), "failed_reads": int(row[1]),
                "bases": int(row[2]), "samples": int(row[3])}

    # -- writing ---------------------------------------------------------------

    def recover(self) -> list[str]:
        """After a restart: put files left 'running' back to 'pending'; return them."""
        with self._tx():
            rows = [r[0] for r in self._db.execute(
                "SELECT path FROM files WHERE state = 'running'")]
            self._db.execute("UPDATE files SET state = 'pending', crashes = crashes + 1, "
                             "reason = 'interrupted (the daemon was killed or crashed while "
                             "basecalling it)' WHERE state = 'running'")
        return rows

    def add_pending(self, path: str, size: int, mtime_ns: int,
                    expected_reads: int | None) -> None:
        """Queue a complete input (new, or a quarantined one that has changed)."""
        with self._tx():
            self._db.execute(
                "INSERT INTO files (path, state, size, mtime_ns, expected_reads, first_seen) "
                "VALUES (?, 'pending', ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET "
                "state = 'pending', size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "expected_reads = excluded.expected_reads, reason = NULL, crashes = 0 "
                "WHERE files.state = 'quarantined'",
                (path, size, mtime_ns, expected_reads, time.time()))

    def start(self, path: str) -> None:
        """Mark ``path`` running (one more attempt)."""
        with self._tx():
            self._db.execute("UPDATE files SET state = 'running', attempts = attempts + 1, "
                             "started = ?, reason = NULL WHERE path = ?", (time.time(), path))

    def abandon(self, path: str, reason: str) -> None:
        """Put a running file back to pending (its output was discarded)."""
        with self._tx():
            self._db.execute("UPDATE files SET state = 'pending', reason = ? WHERE path = ?",
                             (reason, path))

    def fail(self, path: str, reason: str) -> None:
        """A failed attempt not known to be the input's fault: pending again, one more crash."""
        with self._tx():
            self._db.execute("UPDATE files SET state = 'pending', crashes = crashes + 1, "
                             "reason = ? WHERE path = ?", (reason, path))

    def finish(self, path: str, *, output: str, reads: int, failed_reads: int, bases: int,
               samples: int, seconds: float) -> None:
        """Mark ``path`` done; call only once its output is durable under its final name."""
        with self._tx():
            self._db.execute(
                "UPDATE files SET state = 'done', output = ?, reads = ?, failed_reads = ?, "
                "bases = ?, samples = ?, seconds = ?, finished = ?, reason = NULL "
                "WHERE path = ?",
                (output, reads, failed_reads, bases, samples, seconds, time.time(), path))

    def quarantine(self, path: str, reason: str, size: int = 0, mtime_ns: int = 0) -> None:
        """Record ``path`` as corrupt with ``reason`` (insert or update)."""
        now = time.time()
        with self._tx():
            self._db.execute(
                "INSERT INTO files (path, state, size, mtime_ns, reason, first_seen, finished) "
                "VALUES (?, 'quarantined', ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET "
                "state = 'quarantined', reason = excluded.reason, finished = excluded.finished, "
                "size = CASE WHEN excluded.size > 0 THEN excluded.size ELSE files.size END, "
                "mtime_ns = CASE WHEN excluded.mtime_ns > 0 THEN excluded.mtime_ns "
                "ELSE files.mtime_ns END",
                (path, size, mtime_ns, reason, now, now))

    def _tx(self) -> _Transaction:
        """A BEGIN IMMEDIATE ... COMMIT block (rolled back on error)."""
        return _Transaction(self._db)


class _Transaction:
    """Context manager for one write transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def journal_path(state_dir: Path) -> Path:
    """Where the journal lives inside the state folder."""
    return Path(state_dir) / "journal.sqlite3"
