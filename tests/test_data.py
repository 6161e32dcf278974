"""Chunk dataset builder: label slicing through frame positions and the CIGAR, file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.data import (
    RawRead,
    chunk_labels,
    encode,
    greedy_with_frames,
    holdout_ids,
    load_dataset,
    query_to_ref,
    revcomp,
    save_dataset,
)

mappy = pytest.importorskip("mappy")

BASES = "NACGT"


def _logp_for(seq: str, frames_per_base: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Peaky posteriors whose greedy decode is ``seq``: base at frame k*fpb, then blanks."""
    f = len(seq) * frames_per_base
    logp = np.full((f, 5), np.log(0.01), np.float32)
    logp[:, 0] = np.log(0.96)
    pos = np.arange(len(seq)) * frames_per_base
    for p, b in zip(pos, seq, strict=True):
        logp[p] = np.log(0.01)
        logp[p, BASES.index(b)] = np.log(0.96)
    return logp, pos


def test_encode_revcomp_greedy() -> None:
    assert encode("ACGTNacgt").tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
    assert revcomp("AACGTN") == "NACGTT"
    logp, pos = _logp_for("ACCA")
    labels, frames = greedy_with_frames(logp)
    assert labels.tolist() == [1, 2, 2, 1] and frames.tolist() == pos.tolist()


def test_holdout_is_deterministic_by_read() -> None:
    ids = [f"read{i}" for i in range(50)]
    a = holdout_ids(ids, 12)
    assert len(a) == 12 and a == holdout_ids(list(reversed(ids)), 12)


class _Hit:
    def __init__(self, strand: int, q_st: int, q_en: int, r_st: int, cigar: list) -> None:
        self.strand, self.q_st, self.q_en, self.r_st, self.cigar = strand, q_st, q_en, r_st, cigar


def test_query_to_ref_forward_and_reverse() -> None:
    # forward: 3M 1I 2M 2D 2M starting at ref 100, query 1..10
    hit = _Hit(1, 1, 9, 100, [[3, 0], [1, 1], [2, 0], [2, 2], [2, 0]])
    m = query_to_ref(hit, 10)
    assert m.tolist() == [-1, 100, 101, 102, 103, 103, 104, 107, 108, -1]
    # reverse: the same CIGAR walks the reverse complement of the query
    hit = _Hit(-1, 1, 9, 100, [[3, 0], [1, 1], [2, 0], [2, 2], [2, 0]])
    m = query_to_ref(hit, 10)
    assert m.tolist() == [-1, 108, 107, 104, 103, 103, 102, 101, 100, -1]


def _random_ref(tmp_path: Path, n: int = 20000, seed: int = 3) -> tuple[Path, str]:
    rng = np.random.default_rng(seed)
    ref = "".join(rng.choice(list("ACGT"), n))
    path = tmp_path / "ref.fa"
    path.write_text(f">chr\n{ref}\n")
    return path, ref


@pytest.mark.parametrize("strand", [1, -1])
def test_chunk_labels_follow_the_reference(tmp_path: Path, strand: int) -> None:
    ref_path, ref = _random_ref(tmp_path)
    true = ref[5000:8000]
    called = true[:1000] + "G" + true[1000:2000] + true[2003:]  # one insertion, a deletion
    if strand == -1:
        called = revcomp(called)
    logp, _ = _logp_for(called, 3)  # base i at frame 3i, i.e. sample 9i
    read = RawRead("r1", np.zeros(logp.shape[0] * 3, np.float32), "test")
    aligner = mappy.Aligner(str(ref_path), preset="map-ont")
    rows = list(chunk_labels(read, logp, 1800, 1800, aligner))
    assert len(rows) == (logp.shape[0] * 3 - 1800) // 1800 + 1
    for start, lab in rows:
        q0, q1 = start // 9, (start + 1800 + 8) // 9  # bases in this chunk
        piece = called[q0:q1]
        seq = "".join(BASES[b] for b in lab)
        oriented = true if strand == 1 else revcomp(true)
        assert seq in oriented  # an exact reference slice in read orientation
        # 200 called bases -> ~200 reference bases (the indels move it by <= 3)
        assert abs(len(seq) - len(piece)) <= 4


def test_chunk_labels_without_reference_are_the_call() -> None:
    called = "ACGTTGCA" * 40
    logp, _ = _logp_for(called, 3)
    read = RawRead("r1", np.zeros(logp.shape[0] * 3, np.float32), "test")
    rows = list(chunk_labels(read, logp, 1800, 900, None))
    start, lab = rows[1]
    assert start == 900
    assert "".join(BASES[b] for b in lab) == called[100:300]


def test_dataset_round_trip_and_errors(tmp_path: Path) -> None:
    rows = [("a", 0, np.ones(12, np.float32), np.array([1, 2], np.uint8),
             np.zeros((4, 5), np.float32)),
            ("b", 12, np.zeros(12, np.float32), np.array([4, 3, 2], np.uint8),
             np.zeros((4, 5), np.float32))]
    path = tmp_path / "d.npz"
    assert save_dataset(path, rows) == 2
    d = load_dataset(path)
    assert d["labels"].tolist() == [[1, 2, 0], [4, 3, 2]]
    assert d["label_len"].tolist() == [2, 3] and d["teacher"].dtype == np.float16
    assert d["read_id"].tolist() == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_dataset(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="no chunks"):
        save_dataset(tmp_path / "e.npz", [])


def test_merge_repads_labels() -> None:
    from tools.data_r10 import merge

    a = {"signal": np.zeros((2, 6), np.float32), "labels": np.array([[1, 2], [3, 0]], np.uint8),
         "label_len": np.array([2, 1]), "read_id": np.array(["a", "a"]),
         "start": np.array([0, 6])}
    b = {"signal": np.ones((1, 6), np.float32), "labels": np.array([[4, 4, 4]], np.uint8),
         "label_len": np.array([3]), "read_id": np.array(["b"]), "start": np.array([0])}
    m = merge([a, b])
    assert m["labels"].tolist() == [[1, 2, 0], [3, 0, 0], [4, 4, 4]]
    assert m["label_len"].tolist() == [2, 1, 3] and m["read_id"].tolist() == ["a", "a", "b"]
    assert m["signal"].shape == (3, 6)


@pytest.mark.realdata
@pytest.mark.tools
def test_build_with_every_label_kind(tmp_path: Path, shared_data: Path) -> None:
    """Reference labels (E. coli, SARS-CoV-2), basecall labels (tailfindr) and held-out
    evaluation reads, built from a few real reads of each source."""
    pytest.importorskip("torch")
    from tools.data import BASECALL_LABEL_WEIGHT, Source, build_r941, r941_sources

    r9 = shared_data / "r9.4.1"
    tags = {s.tag for s in r941_sources(shared_data)}
    assert {"ecoli", "corona", "lambda", "tailfindr", "human", "klebsiella"} <= tags
    srcs = [Source(r9 / "ecoli" / "reads.pod5", "ecoli", r9 / "ecoli" / "reference.fa.gz",
                   holdout=1, max_reads=3),
            Source(r9 / "corona" / "reads.pod5", "corona",
                   r9 / "corona" / "Corona_NC_045512.2.fasta", holdout=2, max_reads=6),
            Source(r9 / "tailfindr" / "reads.pod5", "tailfindr", weight=BASECALL_LABEL_WEIGHT,
                   max_reads=3)]
    stats = build_r941(tmp_path, shared_data, r9 / "teacher" / "deepnano-blitz" / "rnn48.txt",
                       sources=srcs)
    train, val = load_dataset(tmp_path / "train.npz"), load_dataset(tmp_path / "val.npz")
    held = dict(line.split("\t") for line in (tmp_path / "heldout.tsv").read_text().splitlines())
    assert sorted(held.values()) == ["corona", "corona", "ecoli"]
    assert stats.reads == 12 and stats.val_chunks == len(val["read_id"]) > 0
    ids = set(train["read_id"].tolist())
    assert not ids & set(held)  # held-out reads are never trained on
    assert set(val["read_id"].tolist()) == {k for k, v in held.items() if v == "ecoli"}
    weights = dict(zip(train["read_id"].tolist(), train["weight"].tolist(), strict=True))
    kinds = {"ecoli": set(), "corona": set(), "tailfindr": set()}
    for rid, w in weights.items():
        for src in srcs:
            if rid in {r.read_id for r in _reads(src)}:
                kinds[src.tag].add(w)
    assert kinds == {"ecoli": {1.0}, "corona": {1.0}, "tailfindr": {BASECALL_LABEL_WEIGHT}}
    assert train["teacher"].shape[1:] == (1800 // 3, 5)
    assert (train["label_len"] > 0).all()


def _reads(src) -> list:
    import itertools

    from tools.data import iter_pod5

    return list(itertools.islice(iter_pod5(src.path, src.tag), src.max_reads))
