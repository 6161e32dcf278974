"""Tests for edgecall.trim: adapter detection with edlib and trimming that keeps mv/ts true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam
import pytest

from edgecall import trim
from edgecall.types import CalledRead, RunMeta

pytest.importorskip("edlib")


def _rand(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), n))


def _mutate(rng: np.random.Generator, s: str, rate: float) -> str:
    out = []
    for c in s:
        u = rng.random()
        if u < rate / 3:
            continue
        out.append(str(rng.choice(list("ACGT"))) if u < 2 * rate / 3 else c)
        if 2 * rate / 3 <= u < rate:
            out.append(str(rng.choice(list("ACGT"))))
    return "".join(out)


def test_finds_the_kits_adapter_and_not_random_sequence() -> None:
    rng = np.random.default_rng(0)
    y = trim.ADAPTERS["y_adapter"]
    found = 0
    for _ in range(200):
        lead = _rand(rng, int(rng.integers(0, 12)))
        read = lead + _mutate(rng, y, 0.12) + _rand(rng, 300)
        hit = trim.find_adapter(read, trim.adapters_for("SQK-LSK109"))
        found += hit is not None and abs(hit.end - (len(read) - 300)) <= 2
    assert found >= 190
    false = sum(trim.find_adapter(_rand(rng, 300), trim.adapters_for("unknown-kit"))
                is not None for _ in range(300))
    assert false <= 3
    assert trim.adapters_for("sqk-lsk114") == ("ligation",)
    assert set(trim.adapters_for("")) == set(trim.ADAPTERS)


def _called(seq: str, stride: int = 5) -> CalledRead:
    moves = np.zeros(3 * len(seq), np.uint8)
    moves[::3] = 1
    moves = np.concatenate([np.zeros(7, np.uint8), moves])  # 7 frames before the first base
    return CalledRead(read_id="r", sequence=seq, quality="5" * 10 + "+" * (len(seq) - 10),
                      moves=moves, stride=stride, num_samples=stride * moves.size + 3,
                      trimmed_samples=0, mean_qscore=1.0, sample_rate=4000,
                      run=RunMeta(sequencing_kit="sqk-lsk109"))


def test_trim_start_keeps_moves_and_ts_true() -> None:
    r = _called("ACGTACGTACGTACGTACGT")
    t = trim.trim_start(r, 10)
    assert t.sequence == r.sequence[10:] and t.quality == "+" * 10
    assert int(t.moves.sum()) == len(t.sequence) and t.moves[0] == 1
    assert t.trimmed_samples == (7 + 3 * 10) * 5  # the first kept base's frame, in samples
    assert t.trimmed_samples + t.moves.size * t.stride <= t.num_samples
    assert t.mean_qscore == pytest.approx(10.0)  # Phred of the kept qualities ('+' = Q10)


def test_trimmer_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    body = _rand(rng, 200)
    tr = trim.Trimmer()
    out = tr(_called(trim.ADAPTERS["y_adapter"] + body))
    assert out.sequence == body and (tr.reads, tr.trimmed, tr.bases) == (1, 1, 28)
    assert tr(_called(body)).sequence == body and tr.trimmed == 1


def test_pipeline_trims_the_adapter_from_the_signal(tiny_model: Path, tmp_path: Path) -> None:
    import dorado_sam
    import modelkit

    from edgecall.pipeline import basecall

    rng = np.random.default_rng(7)
    bodies = {f"00000000-0000-0000-0000-00000000000{i}": _rand(rng, 150) for i in range(3)}
    sigs = {rid: modelkit.encode(trim.ADAPTERS["y_adapter"] + b, rng) for rid, b in bodies.items()}
    modelkit.write_pod5(tmp_path / "ad.pod5", sigs, kit="SQK-LSK109")
    out = tmp_path / "t.bam"
    s = basecall([tmp_path / "ad.pod5"], out, model=str(tiny_model), trim_adapters=True)
    assert (s.adapters_trimmed, s.adapter_bases) == (3, 3 * 28)
    assert dorado_sam.check_file(out) == []
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        recs = {a.query_name: a for a in f.fetch(until_eof=True)}
    for rid, body in bodies.items():
        assert recs[rid].query_sequence == body and recs[rid].get_tag("ts") > 0
        mv = list(recs[rid].get_tag("mv"))
        assert sum(mv[1:]) == len(body)
    basecall([tmp_path / "ad.pod5"], tmp_path / "k.sam", model=str(tiny_model))
    with pysam.AlignmentFile(str(tmp_path / "k.sam"), check_sq=False) as f:
        assert all(a.query_sequence.startswith(trim.ADAPTERS["y_adapter"])
                   and a.get_tag("ts") == 0 for a in f.fetch(until_eof=True))


def test_kit_name_overrides_the_reads_kit() -> None:
    import dataclasses

    from edgecall.errors import EdgecallError

    body = _rand(np.random.default_rng(4), 200)
    r = dataclasses.replace(_called(trim.ADAPTERS["y_adapter"] + body),
                            run=RunMeta(sequencing_kit="sqk-rad004"))
    assert trim.Trimmer()(r).sequence == r.sequence  # RAD004's adapter is not there
    assert trim.Trimmer(kit="SQK-LSK109")(r).sequence == body
    with pytest.raises(EdgecallError, match="unknown kit 'SQK-XYZ'"):
        trim.Trimmer(kit="SQK-XYZ")
