"""Tests for tools.data_bam: move tables + CIGAR -> chunk labels, on hand-made and real reads."""

from __future__ import annotations

import argparse
import array
import difflib
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest

from edgecall.io.reader import iter_reads
from edgecall.signal import Normalisation, normalise, prepare
from tools import data_bam as db
from tools import simulate as sim

ACGT = "NACGT"

# A hand-checked record (BAM orientation). Query TTACGGATCA, CIGAR 2S3M1I2M1D2M over the
# reference ACTATCCA (ref[2]=T is a mismatch against query G; ref[5]=C is deleted).
# Moves: stride 2, ts 3 -> bases start at 3,7,9,13,15,17,23,25,29,31 and end at 35.
QUERY = "TTACGGATCA"
REF = "ACTATCCA"
MV = [2, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0]
STARTS = [3, 7, 9, 13, 15, 17, 23, 25, 29, 31, 35]


def _labels(chunks: db.ChunkSet) -> list[str]:
    """Chunk labels as strings."""
    return ["".join(ACGT[v] for v in row[:n]) for row, n in zip(chunks.labels,
                                                                 chunks.label_len, strict=True)]


def _hand_sam(tmp_path: Path, reverse: bool, read_id: str) -> Path:
    """Write the hand-checked record as a SAM file (mapped forward or reverse)."""
    header = pysam.AlignmentHeader.from_dict({"HD": {"VN": "1.6"},
                                              "SQ": [{"SN": "chr", "LN": 100}]})
    a = pysam.AlignedSegment(header)
    a.query_name = read_id
    a.query_sequence = QUERY
    a.flag = 16 if reverse else 0
    a.reference_id = 0
    a.reference_start = 10
    a.mapping_quality = 60
    a.cigarstring = "2S3M1I2M1D2M"
    a.query_qualities = pysam.qualitystring_to_array("I" * len(QUERY))
    a.set_tag("MD", "2T2^C2")
    a.set_tag("ts", 3)
    a.set_tag("mv", array.array("b", MV))
    path = tmp_path / f"hand_{int(reverse)}.sam"
    with pysam.AlignmentFile(str(path), "w", header=header) as out:
        out.write(a)
    return path


def _hand_pod5(tmp_path: Path, read_id: str) -> Path:
    """A pod5 holding a 40-sample read with that id (ramp signal)."""
    offset, scale = sim.calibration(sim.get_chemistry("r10.4.1"))
    raw = (np.arange(40, dtype=np.int16) * 7 + 600).astype(np.int16)
    read = sim.SimulatedRead(read_id=read_id, sequence="A", signal=raw, offset=offset,
                             scale=scale, base_starts=np.array([0, 40]), sample_rate=4000)
    path = tmp_path / "hand.pod5"
    sim.write_pod5(path, [read], chemistry="r10.4.1")
    return path


def test_move_starts() -> None:
    assert db.move_starts(MV, 3).tolist() == STARTS
    assert db.move_starts(MV, 3, sp=100).tolist() == [s + 100 for s in STARTS]
    with pytest.raises(ValueError):
        db.move_starts([0, 1], 0)


def test_cigar_ref_before() -> None:
    before, aligned = db.cigar_ref_before([(4, 2), (0, 3), (1, 1), (0, 2), (2, 1), (0, 2)], 10)
    assert before.tolist() == [0, 0, 0, 1, 2, 3, 3, 4, 6, 7]
    assert aligned.tolist() == [False, False, True, True, True, False, True, True, True, True]
    with pytest.raises(ValueError, match="CIGAR covers"):
        db.cigar_ref_before([(0, 3)], 4)


@pytest.mark.parametrize(("reverse", "expected", "starts", "match"), [
    # forward: chunks [9,17) [17,25) [25,33) hold bases 2-4, 5-6, 7-9 (5 = the insertion)
    (False, ["ACT", "A", "TCCA"], [9, 17, 25], [False, False, True, True, False, False, True,
                                                 True, True, True]),
    # reverse: read TGATCCGTAA against TGGATAGT; chunks hold bases 0-2, 3-5 (4 = insertion,
    # 5 mismatch), 6-7; the deleted G sits before base 2, so the first label is TG(G)A
    (True, ["TGGA", "TA", "GT"], [3, 11, 19], [True, True, True, True, False, False, True, True,
                                               False, False]),
])
def test_hand_checked_record(tmp_path: Path, reverse: bool, expected: list[str],
                             starts: list[int], match: list[bool]) -> None:
    rid = "00000000-0000-4000-8000-000000000001"
    sam, pod = _hand_sam(tmp_path, reverse, rid), _hand_pod5(tmp_path, rid)
    with pysam.AlignmentFile(str(sam), check_sq=False) as fh:
        seg = db.segment_record(next(iter(fh)))
    assert seg.base_starts.tolist() == STARTS
    assert seg.match.tolist() == match
    chunks, summary = db.chunks_from_bam([pod], sam, chunk_size=8, sample_rate=4000)
    assert _labels(chunks) == expected
    assert chunks.start.tolist() == starts
    assert summary.reads == 1 and summary.chunks == len(expected)
    read = next(iter_reads([pod]))
    full = prepare(read, Normalisation("median_mad"), 4000)
    for s, x in zip(chunks.start, chunks.signal, strict=True):
        assert np.array_equal(x, full[s:s + 8])


def test_resampled_positions(tmp_path: Path) -> None:
    """A 4 kHz read cut for an 8 kHz model: positions double, labels stay the same."""
    rid = "00000000-0000-4000-8000-000000000002"
    sam, pod = _hand_sam(tmp_path, False, rid), _hand_pod5(tmp_path, rid)
    chunks, _ = db.chunks_from_bam([pod], sam, chunk_size=16, sample_rate=8000)
    assert _labels(chunks) == ["ACT", "A", "TCCA"]
    assert chunks.start.tolist() == [18, 34, 50] and chunks.signal.shape == (3, 16)


def test_unmapped_record_labels(tmp_path: Path) -> None:
    rid = "00000000-0000-4000-8000-000000000003"
    sam = _hand_sam(tmp_path, False, rid)
    with pysam.AlignmentFile(str(sam), check_sq=False) as fh:
        a = next(iter(fh))
    a.flag = 4
    with pytest.raises(ValueError, match="unmapped"):
        db.segment_record(a)
    seg = db.segment_record(a, unaligned="basecall")
    assert (seg.first, seg.last) == (0, 10)
    assert "".join(ACGT[v] for v in seg.target) == QUERY


def test_cut_chunks_accuracy_filter() -> None:
    seg = db.Segmentation("r", np.array(STARTS), db.encode_labels(REF),
                          np.array([0, 0, 0, 1, 2, 3, 3, 4, 6, 7, 8]), 2, 10,
                          np.array([0, 0, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool))
    x = np.arange(40, dtype=np.float32)
    assert len(db.cut_chunks(x, seg, chunk_size=8)) == 3
    kept = db.cut_chunks(x, seg, chunk_size=8, min_accuracy=0.7)  # 2/3, 1/2 and 3/4 match
    assert [s for s, _, _ in kept] == [25]
    with pytest.raises(ValueError):
        db.cut_chunks(x, seg, chunk_size=8, overlap=8)


def test_simulated_chunks_are_exact(tmp_path: Path) -> None:
    model = sim.synthetic_kmer_model(6, seed=0, shift=2)
    ds = sim.simulate_dataset(tmp_path / "sim", 3, "r9.4.1", seed=2, read_length=600,
                              kmer_model=model)
    chunks, summary = db.chunks_from_simulated(ds.fasta.parent, chunk_size=1000)
    seqs, truth = sim.read_fasta(ds.fasta), sim.load_truth(ds.truth)
    assert summary.chunks == len(chunks.read_id) > 3 and chunks.sample_rate == 4000
    for rid, s, lab in zip(chunks.read_id, chunks.start, _labels(chunks), strict=True):
        bs = truth[str(rid)]
        inside = np.flatnonzero((bs[:-1] >= s) & (bs[:-1] < s + 1000))
        assert lab == seqs[str(rid)][inside[0]:inside[-1] + 1]
    # resampled to 5 kHz: same labels, positions scaled by 5/4
    up, _ = db.chunks_from_simulated(ds.fasta.parent, chunk_size=1250, sample_rate=5000)
    assert up.signal.shape[1] == 1250 and len(up.read_id) > 0


def test_save_chunks_format(tmp_path: Path) -> None:
    model = sim.synthetic_kmer_model(6, seed=0, shift=2)
    ds = sim.simulate_dataset(tmp_path / "sim", 2, "r9.4.1", seed=1, read_length=400,
                              kmer_model=model)
    chunks, _ = db.chunks_from_simulated(ds.fasta.parent, chunk_size=800)
    out = db.save_chunks(tmp_path / "c.npz", chunks)
    with np.load(out) as z:
        assert z["signal"].dtype == np.float32 and z["signal"].shape[1] == 800
        assert z["labels"].dtype == np.uint8 and z["labels"].max() <= 4
        assert z["label_len"].dtype == np.int32
        assert (z["label_len"] > 0).all()
        assert (z["labels"][np.arange(z["labels"].shape[1]) >= z["label_len"][:, None]] == 0
                ).all()
        assert z["read_id"].dtype.kind == "U" and int(z["sample_rate"]) == 4000
    # signal is the device normalisation of the whole read
    with np.load(out) as z:
        rid, s = str(z["read_id"][0]), int(z["start"][0])
        first = z["signal"][0]
    read = next(r for r in iter_reads([ds.pod5]) if r.read_id == rid)
    assert np.array_equal(first, normalise(read.signal_pa(), Normalisation("median_mad"))
                          [s:s + 800])


def _cli(argv: list[str]) -> int:
    """This step alone behind the ``python -m tools`` error contract."""
    parser = argparse.ArgumentParser(prog="python -m tools")
    db.register(parser.add_subparsers(dest="step", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"tools {args.step}: error: {exc}", file=sys.stderr)
        return 1


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = sim.synthetic_kmer_model(6, seed=0, shift=2)
    ds = sim.simulate_dataset(tmp_path / "sim", 2, "r9.4.1", seed=1, read_length=400,
                              kmer_model=model)
    assert _cli(["data-bam", "--simulated", str(ds.fasta.parent), "--out",
                 str(tmp_path / "x.npz"), "--chunk-size", "800"]) == 0
    assert "chunks from 2 reads" in capsys.readouterr().out
    assert (tmp_path / "x.npz").is_file()
    assert _cli(["data-bam", "--bam", "x.bam", "--out", "y.npz", "--chunk-size", "800",
                 "--sample-rate", "4000"]) == 1
    assert "needs --pod5" in capsys.readouterr().err
    assert _cli(["data-bam", "--bam", str(tmp_path / "no.bam"), "--pod5", str(tmp_path),
                 "--out", "y.npz", "--chunk-size", "800", "--sample-rate", "4000"]) == 1
    assert "no such BAM/SAM file" in capsys.readouterr().err
    assert _cli(["data-bam", "--simulated", str(tmp_path), "--out", "y.npz",
                 "--chunk-size", "800"]) == 1
    assert "missing" in capsys.readouterr().err
    assert _cli(["data-bam", "--simulated", str(ds.fasta.parent), "--out", "y.npz",
                 "--chunk-size", "100", "--overlap", "100"]) == 1


# ---------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_remora_can_chunks_line_up_with_moves(shared_data: Path) -> None:
    """Each chunk's label matches the basecall of the bases whose moves fall in it."""
    d = shared_data / "r10.4.1" / "remora_can"
    chunks, summary = db.chunks_from_bam([d / "reads.pod5"], d / "mappings.bam",
                                         chunk_size=2000, sample_rate=4000)
    assert summary.reads == 14 and not summary.failed and summary.chunks > 400
    with pysam.AlignmentFile(str(d / "mappings.bam"), check_sq=False) as fh:
        recs = {a.query_name: a for a in fh}
    assert {recs[str(r)].is_reverse for r in chunks.read_id} == {True, False}

    def pair(j: int, shift: int) -> tuple[str, str]:
        """(basecall of the bases whose moves fall in chunk j shifted by `shift`, label)."""
        a = recs[str(chunks.read_id[j])]
        seq = db.revcomp(a.query_sequence) if a.is_reverse else a.query_sequence
        starts = db.move_starts(a.get_tag("mv"), a.get_tag("ts"))
        s = chunks.start[j] + shift
        bases = seq[np.searchsorted(starts[:-1], s):np.searchsorted(starts[:-1], s + 2000)]
        return bases, "".join(ACGT[v] for v in chunks.labels[j, :chunks.label_len[j]])

    def ratio(j: int, shift: int = 0) -> float:
        return difflib.SequenceMatcher(None, *pair(j, shift), autojunk=False).ratio()

    def ends_agree(shift: int) -> float:
        """Share of chunks whose first and last 8 label bases equal the basecall's."""
        pairs = [pair(j, shift) for j in range(len(chunks.read_id))]
        return float(np.mean([b[:8] == lab[:8] and b[-8:] == lab[-8:] for b, lab in pairs]))

    picks = range(0, len(chunks.read_id), 7)
    assert np.median([ratio(j) for j in picks]) > 0.97  # dorado basecalls are ~99% accurate
    assert np.median([ratio(j, shift=2000) for j in picks]) < 0.7  # the next chunk's bases
    # the chunk edges sit on the right base: measured 0.80 aligned, 0.30 one move step off
    assert ends_agree(0) > 0.7
    assert ends_agree(5) < 0.45


@pytest.mark.realdata
def test_hand_checked_remora_can_read(shared_data: Path) -> None:
    """Read 14112545 (forward, ts 10, stride 5, CIGAR 73S1100M...): first chunk by hand."""
    d = shared_data / "r10.4.1" / "remora_can"
    with pysam.AlignmentFile(str(d / "mappings.bam"), check_sq=False) as fh:
        a = next(r for r in fh if r.query_name.startswith("14112545"))
    seg = db.segment_record(a)
    mv = np.asarray(a.get_tag("mv"))
    first_move = np.flatnonzero(mv[1:])[73]  # base 73 = first aligned base after 73S
    assert seg.first == 73 and seg.base_starts[73] == 10 + 5 * first_move
    ref = a.get_reference_sequence().upper()
    # 1100M: base 73 + k is reference base k for k < 1100
    for k in (0, 1, 500, 1099):
        assert seg.target_before[73 + k] == k
    assert "".join(ACGT[v] for v in seg.target[:50]) == ref[:50]


def test_paf_segmentation_hand_checked() -> None:
    # 5 samples trimmed; bases 0-1 take 3 and 2 samples, 4 samples without a base, base 2
    # has no samples (1D), bases 3-4 take 1 and 2 samples; target = bases 1..5 of ACGTACG
    line = "\t".join(["r1", "20", "5", "17", "+", "r1", "7", "1", "6", "5", "5", "255",
                      "ss:Z:3,2,4I,1D,1,2,"])
    seg = db.paf_segmentation(line + "\n", {"r1": "ACGTACG"})
    assert seg.base_starts.tolist() == [5, 8, 14, 14, 15, 17]
    assert "".join(ACGT[v] for v in seg.target) == "CGTAC"
    x = np.arange(20, dtype=np.float32)
    got = db.cut_chunks(x, seg, chunk_size=6, overlap=3)
    assert [(s, "".join(ACGT[v] for v in lab)) for s, _, lab in got] == [(5, "CG"), (8, "G"),
                                                                     (11, "TAC")]
    with pytest.raises(ValueError, match="length differs"):
        db.paf_segmentation(line, {"r1": "ACGT"})
    with pytest.raises(ValueError, match="cover"):
        db.paf_segmentation(line.replace("ss:Z:3,", "ss:Z:4,"), {"r1": "ACGTACG"})
    with pytest.raises(ValueError, match="reverse"):
        db.paf_segmentation(line.replace("\t+\t", "\t-\t"), {"r1": "ACGTACG"})


@pytest.mark.realdata
def test_squigualiser_paf_matches_kmer_table(shared_data: Path) -> None:
    """Per-base signal means follow the R10.4.1 9-mer table at the simulator's shift (6)."""
    d = shared_data / "r10.4.1" / "squigualiser"
    chunks, summary = db.chunks_from_paf([d / "reads.pod5"], d / "set27_moves.paf",
                                         d / "basecalls.fastq", chunk_size=1800,
                                         sample_rate=4000)
    assert summary.reads >= 25 and summary.chunks > 900
    model = sim.default_kmer_model("r10.4.1")
    basecalls = db.read_fastq(d / "basecalls.fastq")
    with open(d / "set27_moves.paf") as fh:
        fh.readline()  # the first line's ss does not add up to its span
        seg = db.paf_segmentation(fh.readline(), basecalls)
    read = next(iter_reads([d / "reads.pod5"], read_ids={seg.read_id}))
    x = normalise(read.signal_pa(), Normalisation("median_mad"))
    st = seg.base_starts
    means = np.add.reduceat(x[st[0]:st[-1]], st[:-1] - st[0]) / np.maximum(np.diff(st), 1)
    seq = "".join(ACGT[v] for v in seg.target)
    corr = {}
    for shift in (5, 6, 7):
        m = sim.KmerModel(model.k, shift, model.levels, model.sds)
        level = model.levels[sim.base_kmers(sim.sequence_codes(seq), m,
                                            np.random.default_rng(0))]
        corr[shift] = np.corrcoef(means[20:-20], level[20:-20])[0, 1]
    assert corr[6] > 0.7 and corr[6] > corr[5] + 0.2 and corr[6] > corr[7] + 0.2
