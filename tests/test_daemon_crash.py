"""Crash safety of ``edgecall serve``: kill -9 at random points, then restart.

After any number of crashes every read of every input must appear exactly once
across the outputs, no temporary output may remain, and every input must end
up done. Kill points are random (seeded; ``EDGECALL_CRASH_SEED`` overrides) and
they cycle through three kinds, timed by progress rather than wall time so they
land the same on a loaded machine: early (start-up: imports, journal recovery,
temp cleanup, model load), in the middle of a file (this daemon's temp output
exists), and just after a file was committed (rename, fsync, journal, next file).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import daemonkit as dk
import pytest

pytestmark = pytest.mark.slow

N_KILLS = 7


def _check_consistent(out: Path, state: Path, inputs: dict[str, set[str]]) -> None:
    """Between crashes: every file the journal calls done has exactly its reads."""
    for rel, row in dk.journal(state).items():
        if row["state"] != "done":
            continue
        path = out / row["output"]
        ids = dk.fastq_ids(path.parent)
        got = {i for i in ids if i in inputs[rel]}
        assert got == inputs[rel], f"{rel} is done but its output lacks reads"


def test_kill9_at_random_points_then_restart(tmp_path: Path, tiny_model: Path) -> None:
    seed = int(os.environ.get("EDGECALL_CRASH_SEED", "20261123"))
    rng = random.Random(seed)
    watch, out, state, log = (tmp_path / n for n in ("watch", "out", "state", "daemon.log"))
    layout = {f"run/pod5_{'pass' if i % 3 else 'fail'}/batch_{i}.pod5": 16 for i in range(12)}
    inputs = dk.make_inputs(watch, layout, seed=seed % 1000, min_len=500, max_len=1000)
    all_ids = {rid for rids in inputs.values() for rid in rids}
    cmd = dk.serve_cmd(watch, out, state, tiny_model, "--batch-size", "2",
                       "--max-crashes", "1000", "--settle", "0.2")
    kills: list[dict[str, object]] = []
    arrivals: list[threading.Thread] = []
    attempt = 0
    while len(kills) < N_KILLS and attempt < 4 * N_KILLS:
        attempt += 1
        if dk.states(state)["done"] == len(layout):  # all done too soon: more files arrive,
            rel = f"run/pod5_pass/late_{attempt}.pod5"  # copied in slowly as MinKNOW writes
            staged, ids = dk.staged_pod5(tmp_path / "stage", 16, seed=seed % 1000 + attempt,
                                         min_len=500, max_len=1000)
            layout[rel], inputs[rel] = 16, ids
            all_ids |= ids
            arrivals.append(threading.Thread(target=dk.copy_slowly, args=(staged, watch / rel),
                                             kwargs={"chunks": 8, "delay": 0.05}))
            arrivals[-1].start()
        offset = log.stat().st_size if log.exists() else 0
        proc = dk.start(cmd, log)
        try:
            mode = ("early", "mid-file", "after-file")[attempt % 3]
            done_before = dk.states(state)["done"]
            if mode == "early":  # imports, journal recovery, temp cleanup, model load
                time.sleep(rng.uniform(0.05, 0.8))
            elif mode == "mid-file":  # while this daemon writes a temp output
                dk.wait_for(lambda p=proc: _own_temp(out, p.pid)
                            or dk.states(state)["done"] == len(layout),
                            60, "a temp output", interval=0.005, proc=proc, log=log)
                time.sleep(rng.uniform(0.0, 0.1))
            else:  # just after a file was committed: rename, fsync, journal, next file
                dk.wait_for(lambda d=done_before: dk.states(state)["done"] > d, 60,
                            "a file done", interval=0.005, proc=proc, log=log)
                time.sleep(rng.uniform(0.0, 0.05))
            alive = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            dk.stop(proc, signal.SIGKILL)
        counts = dk.states(state)
        if alive and counts["done"] < len(layout):  # killed with work still to do
            kills.append({"mode": mode, "phase": _phase(log, offset), **counts})
        _check_consistent(out, state, inputs)
    for thread in arrivals:
        thread.join()
    proc = dk.start([*cmd, "--once"], log)
    assert proc.wait(180) == 0, log.read_text()[-3000:]
    # crash point "after the rename, before the journal commit": fake it by flipping a
    # done file back to running, as a crash there leaves it; the restart redoes it
    flipped = _flip_one_done_to_running(state)
    proc = dk.start([*cmd, "--once"], log)
    assert proc.wait(180) == 0, log.read_text()[-3000:]
    rows = dk.journal(state)
    ids = dk.fastq_ids(out)
    print(f"\ncrash test seed {seed}: {len(kills)} kill -9 of a live daemon "
          f"({sum(1 for k in kills if k['phase'] == 'mid-file')} mid-file), "
          f"{len(all_ids)} reads checked, "
          f"{sum(r['attempts'] for r in rows.values())} attempts for {len(rows)} files, "
          f"flipped {flipped}; kills: {kills}")
    assert len(kills) >= 5, kills
    assert sum(1 for k in kills if k["phase"] == "mid-file") >= 2, kills
    assert {r["state"] for r in rows.values()} == {"done"}
    assert set(ids) == all_ids and set(ids.values()) == {1}, "a read is missing or repeated"
    assert sum(r["reads"] for r in rows.values()) == len(all_ids)
    assert not dk.temp_files(out)
    assert any(r["interrupts"] for r in rows.values()), "no file was ever interrupted"


def _own_temp(out: Path, pid: int) -> bool:
    """True when the daemon ``pid`` has a temp output open."""
    return any(p.name.endswith(f".{pid}.tmp") for p in dk.temp_files(out))


def _phase(log: Path, offset: int) -> str:
    """Where the killed daemon was, from its log since ``offset``."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    if ": watching " not in text:
        return "start-up"
    if text.rfind("basecalling ->") > text.rfind(": done,"):
        return "mid-file"
    return "between files"


def _flip_one_done_to_running(state: Path) -> str | None:
    """Set one done journal row back to 'running'; return its path."""
    con = sqlite3.connect(state / "journal.sqlite3", isolation_level=None)
    try:
        row = con.execute("SELECT path FROM files WHERE state = 'done' LIMIT 1").fetchone()
        if row:
            con.execute("UPDATE files SET state = 'running' WHERE path = ?", row)
        return row[0] if row else None
    finally:
        con.close()
