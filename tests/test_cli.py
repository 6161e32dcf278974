"""The ``edgecall`` command line end to end, as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import modelkit
import pysam
import pytest


def edgecall(*args: str, env: dict[str, str] | None = None, timeout: int = 120
             ) -> subprocess.CompletedProcess:
    """Run ``python -m edgecall ARGS`` and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("EDGECALL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "edgecall", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def test_help_is_fast_and_lists_commands() -> None:
    r = edgecall("--help")
    assert r.returncode == 0 and "basecall" in r.stdout and "models" in r.stdout
    # no heavy imports at start-up
    code = ("import sys, edgecall.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('onnxruntime', 'torch', 'pysam', 'pod5') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_basecall_to_stdout(tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]],
                            tmp_path: Path) -> None:
    path, seqs = coded_pod5
    r = edgecall("basecall", str(path), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split("\t")[0][1:] for ln in lines[0::4]] == list(seqs)
    assert lines[1::4] == list(seqs.values())
    assert f"{len(seqs)} reads" in r.stderr and "samples/s" in r.stderr
    assert "peak RSS" in r.stderr


def test_basecall_bam_with_read_ids_and_max_reads(tiny_model: Path, tmp_path: Path,
                                                  coded_pod5: tuple[Path, dict[str, str]]
                                                  ) -> None:
    path, seqs = coded_pod5
    ids = list(seqs)[1:4]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "o.bam"
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "--read-ids",
                 str(tmp_path / "ids.txt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        got = {a.query_name: a.query_sequence for a in f.fetch(until_eof=True)}
        assert "edgecall" in f.header.to_dict()["PG"][0]["CL"]
    assert got == {i: seqs[i] for i in ids}
    r = edgecall("basecall", str(path.parent), "--model", str(tiny_model), "--max-reads", "2",
                 "-o", str(tmp_path / "two.fastq.gz"))
    assert r.returncode == 0 and len(list(pysam.FastxFile(str(tmp_path / "two.fastq.gz")))) == 2


def test_bad_inputs_give_one_line_errors(tiny_model: Path, tmp_path: Path,
                                         coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    r = edgecall("basecall", str(tmp_path / "missing.pod5"), "--model", str(tiny_model))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert "missing.pod5: no such file" in r.stderr
    bad = tmp_path / "notpod5.pod5"
    bad.write_text("hello\n")
    trunc = tmp_path / "trunc.pod5"
    trunc.write_bytes(path.read_bytes()[:5000])
    out = tmp_path / "calls.fastq"
    r = edgecall("basecall", str(bad), str(trunc), str(path), "--model", str(tiny_model),
                 "-o", str(out))
    assert r.returncode == 2
    assert "notpod5.pod5: not a pod5 file" in r.stderr
    assert "trunc.pod5: truncated" in r.stderr
    assert not out.exists() and f"{out} not written" in r.stderr  # input had errors
    r = edgecall("basecall", str(bad), str(path), "--model", str(tiny_model), "--skip-bad",
                 "-o", str(tmp_path / "c2.fastq"))
    assert r.returncode == 0 and "1 bad files" in r.stderr
    assert len(list(pysam.FastxFile(str(tmp_path / "c2.fastq")))) == len(seqs)
    r = edgecall("basecall", str(path), "--model", str(tmp_path / "nomodel"))
    assert r.returncode == 1 and "unknown model" in r.stderr
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "-o",
                 str(tmp_path / "x.txt"))
    assert r.returncode == 1 and "extension" in r.stderr


def test_no_bundled_model_says_so(tmp_path: Path, coded_pod5: tuple[Path, dict[str, str]]
                                  ) -> None:
    r = edgecall("basecall", str(coded_pod5[0]), env={"EDGECALL_MODELS": str(tmp_path)})
    assert r.returncode == 1 and "no trained model is bundled" in r.stderr
    r = edgecall("models", env={"EDGECALL_MODELS": str(tmp_path)})
    assert r.returncode == 0 and "no trained models bundled" in r.stdout


def test_models_lists_cards(tmp_path: Path) -> None:
    modelkit.make_test_model(tmp_path / "a", name="model_a")
    r = edgecall("models", env={"EDGECALL_MODELS": str(tmp_path)})
    assert r.returncode == 0 and "model_a" in r.stdout and "r9.4.1" in r.stdout
    r = edgecall("models", "--json", env={"EDGECALL_MODELS": str(tmp_path)})
    assert '"name": "model_a"' in r.stdout
    import json

    from edgecall.models import load_card

    row = json.loads(r.stdout)[0]
    card = load_card(tmp_path / "a")
    assert row["size_bytes"] == card.onnx_path.stat().st_size  # the file that runs
    assert row["folder_bytes"] == sum((card.folder / f).stat().st_size
                                      for f in [card.file, *card.variants.values()]
                                      if (card.folder / f).is_file())


@pytest.mark.realdata
def test_real_reads_with_level_model_plumbing(shared_data: Path, tiny_model: Path,
                                              tmp_path: Path) -> None:
    """Real R9.4.1 pod5 through the whole CLI (plumbing: one record per read, in order)."""
    src = shared_data / "r9.4.1" / "ecoli" / "reads.pod5"
    out = tmp_path / "ecoli.bam"
    r = edgecall("basecall", str(src), "--model", str(tiny_model), "-o", str(out),
                 "--max-reads", "10")
    assert r.returncode == 0, r.stderr
    import pod5

    with pod5.Reader(src) as rd:
        want = [str(rec.read_id) for _, rec in zip(range(10), rd.reads(), strict=False)]
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        got = [(a.query_name, a.get_tag("ns")) for a in f.fetch(until_eof=True)]
    assert [g[0] for g in got] == want and all(ns > 1000 for _, ns in got)


def test_options_are_checked_under_the_subcommands_usage(tmp_path: Path) -> None:
    for bad, why in ((["--threads", "-1"], "argument --threads: must be an integer >= 1"),
                     (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
                     (["--min-qscore", "x"], "argument --min-qscore: must be a number >= 0"),
                     (["--bogus"], "unrecognized arguments: --bogus")):
        r = edgecall("basecall", "x.pod5", *bad)
        assert r.returncode == 2 and r.stderr.startswith("usage: edgecall basecall ")
        assert r.stderr.strip().splitlines()[-1].startswith(f"edgecall basecall: error: {why}")
    r = edgecall("basecall", "--help")
    assert "chunks per engine call (default: 32)" in " ".join(r.stdout.split())
    assert "-n MAX_READS, --max-reads" in r.stdout and "-l READ_IDS, --read-ids" in r.stdout


def test_stdout_dash_formats_and_no_silent_overwrite(
        tiny_model: Path, tmp_path: Path, coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    (tmp_path / "ids.txt").write_text("\n".join(list(seqs)[:3]) + "\n")
    r = subprocess.run([sys.executable, "-m", "edgecall", "basecall", str(path), "--model",
                        str(tiny_model), "-o", "-", "--format", "bam", "-n", "2", "-l",
                        str(tmp_path / "ids.txt"), "--emit-moves"],
                       capture_output=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(modelkit.__file__).parents[1])})
    assert r.returncode == 0 and not (tmp_path / "-").exists()
    (tmp_path / "out.bam").write_bytes(r.stdout)
    with pysam.AlignmentFile(str(tmp_path / "out.bam"), check_sq=False) as f:
        recs = list(f.fetch(until_eof=True))
    assert [a.query_name for a in recs] == list(seqs)[:2] and recs[0].has_tag("mv")
    out = tmp_path / "calls.fastq"
    assert edgecall("basecall", str(path), "--model", str(tiny_model), "-o", str(out),
                    "--emit-fastq").returncode == 0
    first = out.read_text()
    assert "\tmv:B:c," not in first and "\tst:Z:2026-01-01T" in first
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "-o", str(out))
    assert r.returncode == 1 and r.stderr.strip() == (
        f"edgecall: error: {out}: output exists; use --force to overwrite it")
    assert out.read_text() == first
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "-o", str(out), "--force",
                 "-n", "1")
    assert r.returncode == 0 and len(list(pysam.FastxFile(str(out)))) == 1
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "-o",
                 str(tmp_path / "x.bam"), "--emit-fastq")
    assert r.returncode == 1 and "a .bam name for FASTQ output" in r.stderr


def test_min_qscore_splits_pass_and_fail(tiny_model: Path, tmp_path: Path,
                                         coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    allq = tmp_path / "all.sam"
    assert edgecall("basecall", str(path), "--model", str(tiny_model), "-o",
                    str(allq)).returncode == 0
    with pysam.AlignmentFile(str(allq), check_sq=False) as f:
        qs = {a.query_name: a.get_tag("qs") for a in f.fetch(until_eof=True)}
    ranked = sorted(qs.values())
    cut = round((ranked[len(qs) // 2 - 1] + ranked[len(qs) // 2]) / 2, 3)  # between two reads
    out = tmp_path / "calls.bam"
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "-o", str(out),
                 "--min-qscore", str(cut))
    assert r.returncode == 0, r.stderr
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        passed = {a.query_name for a in f.fetch(until_eof=True)}
    with pysam.AlignmentFile(str(tmp_path / "calls_fail.bam"), check_sq=False) as f:
        failed = {a.query_name for a in f.fetch(until_eof=True)}
    assert passed == {k for k, q in qs.items() if q >= cut} and passed
    assert failed == {k for k, q in qs.items() if q < cut} and failed
    assert f"{len(failed)} reads below --min-qscore" in r.stderr
    r = edgecall("basecall", str(path), "--model", str(tiny_model), "--min-qscore", str(cut))
    assert r.returncode == 0 and r.stdout.count("\n") == 4 * len(passed)
    assert f"{len(failed)} reads below --min-qscore {cut:g} dropped" in r.stderr
