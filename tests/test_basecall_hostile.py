"""``edgecall basecall`` on bad input (issue 21, defects 2-5): every bad file named on one
line with exit 2, no output renamed into place for input that errored, no temporary
files left by interrupted runs, short reads skipped and counted, chemistry decided per
file whatever the order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import modelkit
import numpy as np
import pytest
from test_cli import edgecall

from edgecall.io.writer import Writer, temp_path

ROOT = Path(__file__).resolve().parents[1]


def _bad_inputs(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Bad pod5 files of every kind: name -> (path, words the error line must hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    cases = {"truncated": (data[:len(data) // 2], "truncated or incomplete"),
             "junk_after": (data + b"junk" * 10, "truncated or incomplete"),
             "not_pod5": (b"@read\nACGT\n+\nIIII\n" * 4, "not a pod5 file"),
             "empty": (b"", "empty file"),
             "sparse": (b"\0" * 4096, "not a pod5 file")}
    out = {}
    for name, (blob, words) in cases.items():
        path = folder / f"{name}.pod5"
        path.write_bytes(blob)
        out[name] = (path, words)
    modelkit.write_pod5(folder / "zero_reads.pod5", {})
    out["zero_reads"] = (folder / "zero_reads.pod5", "no reads")
    modelkit.make_coded_pod5(folder / "r10.pod5", 2, seed=5, flow_cell="FLO-MIN114")
    out["r10"] = (folder / "r10.pod5", "r10.4.1")
    return out


@pytest.mark.parametrize("model", [False, True], ids=["auto-model", "with-model"])
def test_every_input_bad_names_each_file_and_exits_2(tmp_path: Path, tiny_model: Path,
                                                     coded_pod5: tuple[Path, dict[str, str]],
                                                     model: bool) -> None:
    """Defect 2: only 'no readable reads in the input', exit 1, no file or reason."""
    bad = _bad_inputs(tmp_path / "in", coded_pod5[0])
    out = tmp_path / "o.fastq"
    extra = ["--model", str(tiny_model)] if model else []
    r = edgecall("basecall", *[str(p) for p, _ in bad.values()], "-o", str(out), *extra)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgecall: ")]
    for name, (path, words) in bad.items():
        if model and name == "zero_reads":
            continue  # a valid, empty file: nothing to call, no error with a model given
        (line,) = [ln for ln in lines if f"{path}:" in ln]
        assert words in line, (name, line)
    assert "no readable reads" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.fastq.*"))


def test_partly_bad_input_writes_nothing_unless_skip_bad(tmp_path: Path, tiny_model: Path,
                                                         coded_pod5: tuple[Path, dict[str, str]]
                                                         ) -> None:
    """Defect 3: a bad input exited 2 but its readable reads were renamed into place."""
    good, seqs = coded_pod5
    bad = tmp_path / "bad.pod5"
    bad.write_bytes(good.read_bytes()[:-100])
    out = tmp_path / "o.fastq"
    r = edgecall("basecall", str(good), str(bad), "-o", str(out), "--model", str(tiny_model))
    assert r.returncode == 2
    assert f"{bad}: truncated or incomplete pod5 file" in r.stderr
    assert f"{out} not written" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.fastq.*"))
    r = edgecall("basecall", str(good), str(bad), "-o", str(out), "--model", str(tiny_model),
                 "--skip-bad")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[1::4] == list(seqs.values())


def test_output_folder_is_refused_before_any_work(tmp_path: Path, tiny_model: Path,
                                                  coded_pod5: tuple[Path, dict[str, str]]
                                                  ) -> None:
    r = edgecall("basecall", str(coded_pod5[0]), "-o", str(tmp_path), "--model", str(tiny_model))
    assert r.returncode == 1
    assert r.stderr.strip() == f"edgecall: error: {tmp_path}: is a folder; give an output " \
        f"file name (e.g. {tmp_path}/calls.bam)"
    assert not list(tmp_path.glob(".*.tmp"))


def test_temps_of_dead_runs_are_removed_live_ones_kept(tmp_path: Path, tiny_model: Path,
                                                       coded_pod5: tuple[Path, dict[str, str]]
                                                       ) -> None:
    """A kill -9'd run left ``.NAME.PID.tmp`` that no later run removed."""
    out = tmp_path / "o.fastq"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".o.fastq.{dead.pid}.tmp"
    live = tmp_path / f".o.fastq.{os.getpid()}.tmp"  # another run, still alive
    stale.write_text("partial")
    live.write_text("partial")
    r = edgecall("basecall", str(coded_pod5[0]), "-o", str(out), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and live.exists() and out.exists()


def test_sigterm_deletes_the_temporary_output(tmp_path: Path, tiny_model: Path) -> None:
    src = tmp_path / "big.pod5"
    modelkit.make_coded_pod5(src, 400, seed=3, min_len=400, max_len=600)
    out = tmp_path / "o.fastq"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edgecall", "basecall", str(src), "-o",
                             str(out), "--model", str(tiny_model), "--threads", "1",
                             "--batch-size", "1"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        while not list(tmp_path.glob(".o.fastq.*.tmp")) and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "edgecall: interrupted" in err
    assert not out.exists() and not list(tmp_path.glob(".o.fastq.*"))


def test_writer_failing_to_flush_leaves_no_temp(tmp_path: Path) -> None:
    """Disk full while closing: the temporary file is removed, the error raised."""
    out = tmp_path / "o.fastq"
    w = Writer(out, "fastq", False, model_name="m").__enter__()
    assert temp_path(out).exists()
    w._fh.close()  # type: ignore[union-attr]
    w._fh = open("/dev/full", "w")  # noqa: SIM115 - every flush fails with ENOSPC
    w._fh.write("x" * 100)
    with pytest.raises(OSError, match="No space left"):
        w.close(ok=True)
    assert not temp_path(out).exists() and not out.exists()


def test_short_reads_are_skipped_and_counted_not_errors(tmp_path: Path, tiny_model: Path
                                                        ) -> None:
    """Defect 4: one read under --min-samples turned a normal run into exit 2."""
    rng = np.random.default_rng(4)
    seqs = {f"00000000-0000-0000-0000-00000000000{i}": modelkit.random_seq(rng, 150)
            for i in range(3)}
    sigs = {rid: modelkit.encode(s, rng) for rid, s in seqs.items()}
    short = "00000000-0000-0000-0000-0000000000ff"
    sigs[short] = modelkit.encode("ACG", rng)
    src = tmp_path / "in.pod5"
    modelkit.write_pod5(src, sigs)
    out = tmp_path / "o.fastq"
    r = edgecall("basecall", str(src), "-o", str(out), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    assert "3 reads" in r.stderr and "1 short reads skipped" in r.stderr
    assert short not in r.stderr and "failed reads" not in r.stderr
    assert out.read_text().splitlines()[1::4] == list(seqs.values())


def test_mixed_chemistries_decided_per_file_whatever_the_order(tmp_path: Path) -> None:
    """Defect 5: an R10 file first refused everything (exit 1); later it failed per read."""
    r9 = tmp_path / "r9.pod5"
    r10 = tmp_path / "r10.pod5"
    ids9 = set(modelkit.make_coded_pod5(r9, 3, seed=1, min_len=300))
    modelkit.make_coded_pod5(r10, 2, seed=2, flow_cell="FLO-MIN114", sample_rate=5000)
    results = []
    for order in ([r10, r9], [r9, r10]):
        out = tmp_path / "o.fastq"
        r = edgecall("basecall", *map(str, order), "-o", str(out), "--skip-bad", "--force")
        assert r.returncode == 0, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if "r10.4.1" in ln]
        assert len(errors) == 1 and errors[0].startswith(f"edgecall: {r10}: ")
        got = {ln.split("\t")[0][1:] for ln in out.read_text().splitlines()[0::4]}
        results.append((got, r.stderr.count("bad files")))
        out.unlink()
        r = edgecall("basecall", *map(str, order), "-o", str(out))
        assert r.returncode == 2 and not out.exists()
    assert results[0] == results[1] == (ids9, 1)
