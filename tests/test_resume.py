"""Tests for edgecall.io.resume and ``--resume-from`` (dorado's semantics)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest

from edgecall.errors import InputError
from edgecall.io import resume, writer
from edgecall.types import CalledRead


def _called(i: int) -> CalledRead:
    rng = np.random.default_rng(i)
    n = 300
    return CalledRead(read_id=f"read-{i:04d}", sequence="".join(rng.choice(list("ACGT"), n)),
                      quality="".join(chr(33 + int(q)) for q in rng.integers(2, 40, n)),
                      moves=np.ones(n, np.uint8), stride=5, num_samples=5 * n,
                      trimmed_samples=0, mean_qscore=10.0, sample_rate=4000, channel=1 + i)


def _ids(path: Path) -> list[str]:
    with pysam.AlignmentFile(str(path), check_sq=False) as f:
        return [a.query_name for a in f.fetch(until_eof=True)]


def test_truncated_bam_is_read_to_its_last_complete_record(tmp_path: Path) -> None:
    full = tmp_path / "full.bam"
    with writer.open_writer(full, model_name="m", emit_moves=True) as w:
        for i in range(600):
            w.write(_called(i))
    data = full.read_bytes()
    assert len(data) > 3 * 65536  # several BGZF blocks
    cut = tmp_path / "cut.bam"
    cut.write_bytes(data[:len(data) * 2 // 3])
    got = [s.query_name for s in resume.complete_records(cut)]
    assert 0 < len(got) < 600 and got == [f"read-{i:04d}" for i in range(len(got))]
    r = resume.Resume.scan(cut)
    assert r.read_ids == set(got) and not r.partial
    with pytest.raises(InputError, match="no such file to resume from"):
        resume.Resume.scan(tmp_path / "missing.bam")


def test_cut_sam_line_is_dropped(tmp_path: Path) -> None:
    full = tmp_path / "full.sam"
    with writer.open_writer(full, model_name="m") as w:
        for i in range(5):
            w.write(_called(i))
    text = full.read_text()
    cut = tmp_path / "cut.sam"
    cut.write_text(text[:text.rindex("\t")])  # inside the last record's tags
    assert [s.query_name for s in resume.complete_records(cut)] == [
        f"read-{i:04d}" for i in range(4)]


def _edgecall(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecall", *args], capture_output=True,
                          text=True, timeout=120)


def test_resume_after_kill_gives_every_read_once(
        tiny_model: Path, tmp_path: Path, coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    full = tmp_path / "full.sam"
    assert _edgecall("basecall", str(path), "--model", str(tiny_model), "-o",
                     str(full)).returncode == 0
    # what a run killed with -9 leaves: its temporary file, cut inside a record
    text = full.read_text()
    lines = text.splitlines(keepends=True)
    header = sum(1 for ln in lines if ln.startswith("@"))
    partial = "".join(lines[:header + 3]) + lines[header + 3][:40]
    out = tmp_path / "calls.sam"
    (tmp_path / ".calls.sam.999999999.tmp").write_text(partial)
    r = _edgecall("basecall", str(path), "--model", str(tiny_model), "-o", str(out),
                  "--resume-from", str(out))
    assert r.returncode == 0, r.stderr
    assert "3 reads copied" in r.stderr
    got = _ids(out)
    assert sorted(got) == sorted(seqs) and len(got) == len(set(got))  # each exactly once
    assert got[:3] == list(seqs)[:3]  # the resumed reads first, as they were
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        assert {a.query_name: a.query_sequence for a in f.fetch(until_eof=True)} == seqs
    assert not list(tmp_path.glob(".calls.sam*"))  # the partial file is gone once done
    # resuming from a finished file into a new one copies everything and calls nothing
    r = _edgecall("basecall", str(path), "--model", str(tiny_model), "-o",
                  str(tmp_path / "again.bam"), "--resume-from", str(out))
    assert r.returncode == 0 and f"{len(seqs)} reads copied" in r.stderr
    assert sorted(_ids(tmp_path / "again.bam")) == sorted(seqs)


@pytest.mark.slow
def test_real_kill_9_then_resume(tiny_model: Path, tmp_path: Path) -> None:
    """A real run killed with SIGKILL mid-output, then resumed: every read exactly once."""
    import os
    import signal
    import time

    import modelkit

    pod = tmp_path / "many.pod5"
    seqs = modelkit.make_coded_pod5(pod, 400, seed=5, min_len=300, max_len=500)
    out = tmp_path / "calls.sam"
    cmd = [sys.executable, "-m", "edgecall", "basecall", str(pod), "--model", str(tiny_model),
           "-o", str(out), "--batch-size", "1", "--threads", "1", "--engine", "onnx"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    tmp = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(tmp_path.glob(".calls.sam.*.tmp"))
        if found and found[0].stat().st_size > 100_000:
            tmp = found[0]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    if tmp is None:
        pytest.skip("the run finished before it could be killed")
    assert not out.exists() and tmp.exists()
    r = _edgecall("basecall", str(pod), "--model", str(tiny_model), "-o", str(out),
                  "--resume-from", str(out))
    assert r.returncode == 0, r.stderr
    copied = int(r.stderr.split(" reads copied")[0].rsplit("\n", 1)[-1].split()[-1])
    assert 0 < copied < len(seqs)
    got = _ids(out)
    assert sorted(got) == sorted(seqs) and len(got) == len(set(got))
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        assert {a.query_name: a.query_sequence for a in f.fetch(until_eof=True)} == seqs
