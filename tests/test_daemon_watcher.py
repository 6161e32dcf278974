"""Tests for the polling watcher: settle window, completeness check, corrupt files."""

from __future__ import annotations

from pathlib import Path

import daemonkit as dk

from edgecall.daemon.watcher import SETTLED, Watcher
from edgecall.errors import InputError


class Clock:
    """A manual monotonic clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_file_is_ready_only_after_settle_and_check(tmp_path: Path) -> None:
    clock = Clock()
    dk.make_inputs(tmp_path, {"run/pod5_pass/a.pod5": 3}, seed=1)
    w = Watcher(tmp_path, settle=5, clock=clock)
    first = w.poll({})
    assert first.ready == [] and first.waiting == 1
    clock.t += 4.9
    assert w.poll({}).ready == []
    clock.t += 0.2
    ready = w.poll({}).ready
    # the default check reads the pod5 signatures only (no memory map); reads are
    # counted when the file is basecalled
    assert [(c.rel, c.reads) for c in ready] == [("run/pod5_pass/a.pod5", None)]
    assert w.poll({"run/pod5_pass/a.pod5": SETTLED}).waiting == 0  # journal has it now


def test_growing_file_restarts_the_settle_window(tmp_path: Path) -> None:
    clock = Clock()
    src, _ = dk.staged_pod5(tmp_path / "stage", 3, seed=2)
    data = src.read_bytes()
    dst = tmp_path / "watch" / "a.pod5"
    dst.parent.mkdir()
    dst.write_bytes(data[:100])
    w = Watcher(dst.parent, settle=2, check=lambda p: 1, clock=clock)
    w.poll({})
    clock.t += 1.5
    dst.write_bytes(data[:5000])  # MinKNOW appended: the window starts again
    assert w.poll({}).ready == []
    clock.t += 1.5
    assert w.poll({}).ready == []
    clock.t += 0.6
    assert len(w.poll({}).ready) == 1


def test_unreadable_file_is_retried_then_reported_corrupt(tmp_path: Path) -> None:
    clock = Clock()
    bad = tmp_path / "bad.pod5"
    bad.write_bytes(b"")
    w = Watcher(tmp_path, settle=3, clock=clock)
    w.poll({})
    clock.t += 3
    first = w.poll({})  # stable, but unreadable: grace period starts
    assert first.corrupt == [] and first.waiting == 1
    clock.t += 2.9
    assert w.poll({}).corrupt == []
    clock.t += 0.2
    corrupt = w.poll({}).corrupt
    assert len(corrupt) == 1 and "empty file" in corrupt[0].reason
    # quarantined at this signature: skipped until the file changes
    known = {"bad.pod5": (corrupt[0].size, corrupt[0].mtime_ns)}
    assert w.poll(known).waiting == 0
    bad.write_bytes(b"now different")
    assert w.poll(known).waiting == 1


def test_skips_hidden_excluded_and_other_files(tmp_path: Path) -> None:
    calls: list[Path] = []

    def check(p: Path) -> int:
        calls.append(p)
        if p.name == "x.pod5":
            raise InputError(f"{p}: nope")
        return 2

    for rel in ("a.pod5", ".hidden.pod5", ".tmpdir/b.pod5", "out/c.pod5", "d.fast5",
                "e.pod5.tmp", "sub/F.POD5"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    w = Watcher(tmp_path, settle=0, exclude=[tmp_path / "out"], check=check)
    assert sorted(rel for rel, _, _ in w.files()) == ["a.pod5", "sub/F.POD5"]
    w.poll({})
    assert sorted(c.rel for c in w.poll({}).ready) == ["a.pod5", "sub/F.POD5"]


def test_missing_watch_folder_is_not_fatal(tmp_path: Path) -> None:
    w = Watcher(tmp_path / "not-yet", settle=0)
    assert w.poll({}).waiting == 0
    (tmp_path / "not-yet").mkdir()
    assert w.poll({}).waiting == 0
