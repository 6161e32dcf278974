"""Tests for the daemon journal (sqlite3, WAL) and its filesystem helpers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edgecall.daemon import files
from edgecall.daemon.journal import Journal, journal_path
from edgecall.errors import EdgecallError


def test_lifecycle_and_counts(tmp_path: Path) -> None:
    with Journal(journal_path(tmp_path)) as j:
        j.add_pending("ka", "run/pod5/a.pod5", 100, 5, expected_reads=3)
        j.add_pending("kb", "run/pod5/b.pod5", 200, 6, expected_reads=4)
        assert j.next_pending().path == "run/pod5/a.pod5"
        j.start("ka", "run/pod5/a.fastq")
        assert j.counts() == {"pending": 1, "running": 1, "done": 0, "quarantined": 0}
        assert j.output_taken("RUN/pod5/A.FASTQ") and not j.output_taken("run/pod5/b.fastq")
        j.finish("ka", output="run/pod5/a.fastq", reads=3, failed_reads=0,
                 bases=30, samples=300, seconds=1.5)
        j.quarantine("kc", "run/pod5/c.pod5", "c: truncated", 10, 7)
        assert j.counts() == {"pending": 1, "running": 0, "done": 1, "quarantined": 1}
        assert j.totals() == {"reads": 3, "failed_reads": 0, "bases": 30, "samples": 300}
        done = j.get("ka")
        assert done.state == "done" and done.attempts == 1 and done.output.endswith(".fastq")
        assert j.latest("run/pod5/c.pod5").reason == "c: truncated"
        # the same content is never re-queued (wherever it is found again) ...
        j.add_pending("ka", "elsewhere/a.pod5", 100, 5, expected_reads=3)
        assert j.get("ka").state == "done" and j.get("ka").path == "run/pod5/a.pod5"
        # ... new content at a quarantined path replaces the quarantined row
        j.add_pending("kc2", "run/pod5/c.pod5", 20, 8, expected_reads=1)
        assert j.latest("run/pod5/c.pod5").state == "pending" and j.get("kc") is None
        assert j.latest("run/pod5/c.pod5").reason is None


def test_wal_mode_and_recovery_after_crash(tmp_path: Path) -> None:
    path = journal_path(tmp_path)
    j = Journal(path)
    j.add_pending("k", "a.pod5", 1, 1, 1)
    j.start("k")
    # simulate a crash: no close(); open a second connection as a restarted daemon would
    j2 = Journal(path)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j2.recover() == ["a.pod5"]
    entry = j2.get("k")
    assert entry.state == "pending" and "interrupted" in entry.reason
    assert (entry.interrupts, entry.crashes) == (1, 0)  # a kill is not blamed on the file
    assert j2.recover() == []
    j.close()
    j2.close()


def test_abandon_keeps_file_pending_and_forget_drops_it(tmp_path: Path) -> None:
    with Journal(journal_path(tmp_path)) as j:
        j.add_pending("k", "a.pod5", 1, 1, 1)
        j.start("k")
        j.abandon("k", "received SIGTERM")
        e = j.get("k")
        assert (e.state, e.reason, e.crashes) == ("pending", "received SIGTERM", 0)
        j.forget("k")
        assert j.get("k") is None


def test_output_path_and_temp_cleanup(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert files.output_path(out, "r/pod5_pass/x_0.pod5", "bam") == out / "r/pod5_pass/x_0.bam"
    (out / "r").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [out / f".x_0.fastq.{dead.pid}.tmp", out / "r" / f".y.bam.{dead.pid}.tmp",
             out / ".z.fastq.resume.tmp"]
    # a live writer's temp (another daemon sharing --output, a one-shot run) is kept
    keep = [out / "x_1.fastq", out / "r" / "notes.tmp", out / "r" / ".hidden",
            out / f".w.fastq.{os.getpid()}.tmp"]
    for p in stale + keep:
        p.write_text("partial")
    assert sorted(files.remove_stale_temps(out)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_lock_is_exclusive(tmp_path: Path) -> None:
    held = files.acquire_lock(tmp_path)
    try:
        with pytest.raises(EdgecallError, match="another edgecall serve"):
            files.acquire_lock(tmp_path)
    finally:
        held.close()
    files.acquire_lock(tmp_path).close()


def test_place_in_quarantine_links_and_records_reason(tmp_path: Path) -> None:
    src = tmp_path / "watch" / "run" / "bad.pod5"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"junk")
    dst = files.place_in_quarantine(src, tmp_path / "q", "run/bad.pod5", "bad: not pod5", False)
    assert dst == tmp_path / "q" / "run" / "bad.pod5" and dst.read_bytes() == b"junk"
    assert src.exists()
    assert (dst.parent / "bad.pod5.reason.txt").read_text() == "bad: not pod5\n"
    moved = files.place_in_quarantine(src, tmp_path / "q2", "run/bad.pod5", "r", True)
    assert moved is not None and moved.exists() and not src.exists()
