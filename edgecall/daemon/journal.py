"""The daemon's journal: one sqlite3 row per input content, in WAL mode.

States::

    pending ──> running ──> done
       ^           │
       └───────────┘ (abandoned on SIGTERM, or found 'running' after a crash)
    quarantined      (corrupt input; reason recorded)

A row is keyed by the input's content identity (:func:`edgecall.daemon.files.identify`:
size plus a hash of the pod5's head and footer), not by its path, so a done file that
is renamed or moved is not basecalled again, while a file replaced in place with new
content gets a new row (and an output name of its own). The row remembers the path
the content was last seen at, relative to the watched folder; names that are not
valid UTF-8 are stored as their raw bytes (a BLOB).

A file becomes ``done`` only after its output has been renamed to its final name
and synced to disk, so on restart ``done`` files are never redone and anything
else is redone from scratch. Every change is one committed transaction with
``synchronous=FULL``, so a power cut loses at most the change being made.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STATES = ("pending", "running", "done", "quarantined")

_TABLE = """
CREATE TABLE IF NOT EXISTS files (
    key TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'quarantined')),
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    expected_reads INTEGER,
    reads INTEGER NOT NULL DEFAULT 0,
    failed_reads INTEGER NOT NULL DEFAULT 0,
    bases INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    output_fold TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    interrupts INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS files_state ON files (state, first_seen);
CREATE INDEX IF NOT EXISTS files_path ON files (path);
CREATE INDEX IF NOT EXISTS files_output ON files (output_fold);
"""
# version 1 journals were keyed by path; their rows keep the key 'path:<path>'
_V1_COLUMNS = ("path, state, size, mtime_ns, expected_reads, reads, failed_reads, bases, "
               "samples, output, reason, attempts, crashes, first_seen, started, finished, "
               "seconds")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One journal row (``path`` and ``output`` decoded back to ``str``)."""

    key: str
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
    interrupts: int
    first_seen: float
    started: float | None
    finished: float | None
    seconds: float | None


_COLUMNS = ", ".join(FileEntry.__slots__)  # type: ignore[attr-defined]


def encode_name(name: str) -> str | bytes:
    """A file name as sqlite can store it: the text, or its raw bytes if not UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def decode_name(value: str | bytes) -> str:
    """Inverse of :func:`encode_name` (raw bytes come back surrogate-escaped)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}


def safe_text(text: str) -> str:
    """``text`` on one line: undecodable bytes and control characters (a newline in a
    file name, say) shown as ``\\xNN``/``\\n``, so it is storable and cannot forge lines."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return raw.translate(_CONTROL)


def _entry(row: tuple) -> FileEntry:
    """A FileEntry from a SELECT of ``_COLUMNS``."""
    values = list(row)
    values[1] = decode_name(values[1])
    if values[10] is not None:
        values[10] = decode_name(values[10])
    return FileEntry(*values)


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
        with self._tx():
            self._migrate_v1()
            self._db.execute(_TABLE)
            cols = [r[1] for r in self._db.execute("PRAGMA table_info(files)")]
            if "interrupts" not in cols:
                self._db.execute("ALTER TABLE files ADD COLUMN interrupts INTEGER NOT NULL "
                                 "DEFAULT 0")
        self._db.executescript(_INDEXES)

    def _migrate_v1(self) -> None:
        """Re-key a version-1 (path-keyed) table in place, keeping every row."""
        cols = [r[1] for r in self._db.execute("PRAGMA table_info(files)")]
        if not cols or "key" in cols:
            return
        self._db.execute("DROP INDEX IF EXISTS files_state")
        self._db.execute("ALTER TABLE files RENAME TO files_v1")
        self._db.execute(_TABLE)
        self._db.execute(f"INSERT INTO files (key, {_V1_COLUMNS}, output_fold) "
                         f"SELECT 'path:' || path, {_V1_COLUMNS}, lower(output) FROM files_v1")
        self._db.execute("DROP TABLE files_v1")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------

    def get(self, key: str) -> FileEntry | None:
        """The row for content ``key`` or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE key = ?", (key,)).fetchone()
        return _entry(row) if row else None

    def latest(self, path: str) -> FileEntry | None:
        """The most recent row seen at ``path`` or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ? "
                               "ORDER BY first_seen DESC LIMIT 1",
                               (encode_name(path),)).fetchone()
        return _entry(row) if row else None

    def entries(self, state: str | None = None) -> Iterator[FileEntry]:
        """All rows (optionally in one state), oldest first."""
        if state is None:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM files ORDER BY first_seen, path")
        else:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE state = ? "
                                   "ORDER BY first_seen, path", (state,))
        for row in cur.fetchall():
            yield _entry(row)

    def next_pending(self) -> FileEntry | None:
        """The oldest pending file, or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE state = 'pending' "
                               "ORDER BY first_seen, path LIMIT 1").fetchone()
        return _entry(row) if row else None

    def output_taken(self, output: str) -> bool:
        """True if any row owns ``output`` (compared case-insensitively)."""
        row = self._db.execute("SELECT 1 FROM files WHERE output_fold = ? LIMIT 1",
                               (encode_name(output.casefold()),)).fetchone()
        return row is not None

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
        """After a restart: put files left 'running' back to 'pending'; return their paths.

        Each counts one *interruption*, not a crash: a process killed from outside
        (OOM killer, power cut, ``kill -9``) cannot be told from one that died of the
        file, so these have their own, higher limit.
        """
        with self._tx():
            rows = [decode_name(r[0]) for r in self._db.execute(
                "SELECT path FROM files WHERE state = 'running'")]
            self._db.execute("UPDATE files SET state = 'pending', interrupts = interrupts + 1, "
                             "reason = 'interrupted (the daemon was killed or crashed while "
                             "basecalling it)' WHERE state = 'running'")
        return rows

    def requeue_running(self) -> None:
        """Put 'running' files back to 'pending' without counting a crash (the journal,
        not the input, failed while they were in progress)."""
        with self._tx():
            self._db.execute("UPDATE files SET state = 'pending' WHERE state = 'running'")

    def add_pending(self, key: str, path: str, size: int, mtime_ns: int,
                    expected_reads: int | None = None) -> None:
        """Queue new content found complete at ``path``.

        Content already in the journal is left as it is (a done file is never
        redone). Quarantined rows of older content at the same path are dropped:
        that content is gone.
        """
        enc = encode_name(path)
        with self._tx():
            self._db.execute("DELETE FROM files WHERE path = ? AND state = 'quarantined' "
                             "AND key != ?", (enc, key))
            self._db.execute(
                "INSERT INTO files (key, path, state, size, mtime_ns, expected_reads, "
                "first_seen) VALUES (?, ?, 'pending', ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (key, enc, size, mtime_ns, expected_reads, time.time()))

    def move(self, key: str, path: str, size: int, mtime_ns: int) -> None:
        """Record that queued content ``key`` is now found at ``path``."""
        with self._tx():
            self._db.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE key = ?",
                             (encode_name(path), size, mtime_ns, key))

    def forget(self, key: str) -> None:
        """Drop a row whose file changed before it was done (it is considered afresh)."""
        with self._tx():
            self._db.execute("DELETE FROM files WHERE key = ? AND state != 'done'", (key,))

    def start(self, key: str, output: str | None = None) -> None:
        """Mark ``key`` running (one more attempt), owning ``output`` (relative)."""
        with self._tx():
            if output is not None:
                self._db.execute("UPDATE files SET output = ?, output_fold = ? WHERE key = ?",
                                 (encode_name(output), encode_name(output.casefold()), key))
            self._db.execute("UPDATE files SET state = 'running', attempts = attempts + 1, "
                             "started = ?, reason = NULL WHERE key = ?", (time.time(), key))

    def abandon(self, key: str, reason: str) -> None:
        """Put a running file back to pending (its output was discarded)."""
        with self._tx():
            self._db.execute("UPDATE files SET state = 'pending', reason = ? WHERE key = ?",
                             (safe_text(reason), key))

    def fail(self, key: str, reason: str) -> None:
        """A failed attempt not known to be the input's fault: pending again, one more crash."""
        with self._tx():
            self._db.execute("UPDATE files SET state = 'pending', crashes = crashes + 1, "
                             "reason = ? WHERE key = ?", (safe_text(reason), key))

    def finish(self, key: str, *, output: str, reads: int, failed_reads: int, bases: int,
               samples: int, seconds: float) -> None:
        """Mark ``key`` done; call only once its output is durable under its final name."""
        with self._tx():
            self._db.execute(
                "UPDATE files SET state = 'done', output = ?, output_fold = ?, reads = ?, "
                "failed_reads = ?, bases = ?, samples = ?, seconds = ?, finished = ?, "
                "reason = NULL WHERE key = ?",
                (encode_name(output), encode_name(output.casefold()), reads, failed_reads,
                 bases, samples, seconds, time.time(), key))

    def quarantine(self, key: str, path: str, reason: str, size: int = 0,
                   mtime_ns: int = 0) -> None:
        """Record content ``key`` (at ``path``) as corrupt with ``reason``."""
        now = time.time()
        enc = encode_name(path)
        with self._tx():
            self._db.execute("DELETE FROM files WHERE path = ? AND state = 'quarantined' "
                             "AND key != ?", (enc, key))
            self._db.execute(
                "INSERT INTO files (key, path, state, size, mtime_ns, reason, first_seen, "
                "finished) VALUES (?, ?, 'quarantined', ?, ?, ?, ?, ?) ON CONFLICT (key) DO "
                "UPDATE SET state = 'quarantined', path = excluded.path, "
                "reason = excluded.reason, finished = excluded.finished, "
                "size = CASE WHEN excluded.size > 0 THEN excluded.size ELSE files.size END, "
                "mtime_ns = CASE WHEN excluded.mtime_ns > 0 THEN excluded.mtime_ns "
                "ELSE files.mtime_ns END",
                (key, enc, size, mtime_ns, safe_text(reason), now, now))

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
        if exc_type is not None:
            self._rollback()
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:  # e.g. the disk filled up: leave no transaction open
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back if a transaction is open (it may already have been)."""
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def journal_path(state_dir: Path) -> Path:
    """Where the journal lives inside the state folder."""
    return Path(state_dir) / "journal.sqlite3"
