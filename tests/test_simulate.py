"""Tests for tools.simulate: pod5 round trip, dwell/level statistics, determinism, errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pod5
import pytest

from tools import simulate as sim


def main(argv: list[str]) -> int:
    """The ``python -m tools`` contract for this step alone (one-line error, exit 1).

    Other steps are built in parallel, so the shared dispatcher is not used here.
    """
    parser = argparse.ArgumentParser(prog="python -m tools")
    sim.register(parser.add_subparsers(dest="step", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"tools {args.step}: error: {exc}", file=sys.stderr)
        return 1

BARE = sim.SignalParams(stall_prob=0.0, drift_pa=0.0, read_shift_sd=0.0, read_scale_sd=0.0,
                        substeps=1, noise_ar=0.0)
SYN6 = sim.synthetic_kmer_model(6, seed=3, shift=2)


def _reads_back(path: Path) -> dict[str, tuple]:
    """Read every record of a pod5 into memory (signal, calibration, run info)."""
    out = {}
    with pod5.Reader(path) as reader:
        for rec in reader.reads():
            out[str(rec.read_id)] = (rec.signal.copy(), rec.calibration, rec.run_info,
                                     rec.pore, rec.read_number, rec.start_sample,
                                     rec.end_reason.name)
    return out


@pytest.mark.parametrize("chem", ["r9.4.1", "r10.4.1"])
def test_pod5_round_trip(tmp_path: Path, chem: str) -> None:
    preset = sim.get_chemistry(chem)
    model = sim.synthetic_kmer_model(preset.k, seed=1, shift=preset.shift)
    seqs = sim.random_sequences(3, np.random.default_rng(0), 400)
    reads = sim.simulate_reads(seqs, chem, seed=5, model=model)
    fasta = sim.write_pod5(tmp_path / "x.pod5", reads, chemistry=chem, seed=5)
    back = _reads_back(tmp_path / "x.pod5")
    assert list(back) == [r.read_id for r in reads]
    for r in reads:
        signal, cal, info, pore, number, start, end = back[r.read_id]
        assert signal.dtype == np.int16 and np.array_equal(signal, r.signal)
        assert (cal.offset, cal.scale) == (r.offset, r.scale)
        assert (pore.channel, pore.well, number, start) == (r.channel, r.well, r.read_number,
                                                            r.start_sample)
        assert end == "signal_positive"
        assert info.sample_rate == preset.sample_rate == r.sample_rate
        assert info.flow_cell_product_code == preset.flow_cell_product_code
        assert info.sequencing_kit == preset.sequencing_kit
        assert (info.adc_min, info.adc_max) == (preset.adc_min, preset.adc_max)
        assert info.context_tags["sample_frequency"] == str(preset.sample_rate)
        assert info.tracking_id["flow_cell_product_code"] == preset.flow_cell_product_code
        assert info == sim.run_info(preset, preset.sample_rate, 5)
        assert r.base_starts[-1] == signal.size and len(r.base_starts) == len(r.sequence) + 1
    assert sim.read_fasta(fasta) == {r.read_id: r.sequence for r in reads}


def test_calibration_matches_adc() -> None:
    preset = sim.get_chemistry("r10.4.1")
    offset, scale = sim.calibration(preset)
    digitisation = preset.adc_max - preset.adc_min + 1
    assert scale == pytest.approx(preset.calib_range / digitisation, rel=1e-6)
    assert np.float32(scale) == scale and offset == -253.0


def test_fixture_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = sim.make_fixture_pod5(tmp_path / "a.pod5", n_reads=3, seed=4, kmer_model=SYN6,
                              read_length=300)
    b = sim.make_fixture_pod5(tmp_path / "b.pod5", n_reads=3, seed=4, kmer_model=SYN6,
                              read_length=300)
    c = sim.make_fixture_pod5(tmp_path / "c.pod5", n_reads=3, seed=5, kmer_model=SYN6,
                              read_length=300)
    assert a == b and len(a) == 3
    assert set(a).isdisjoint(c)
    ra, rb = _reads_back(tmp_path / "a.pod5"), _reads_back(tmp_path / "b.pod5")
    for rid in a:
        assert np.array_equal(ra[rid][0], rb[rid][0])
        assert ra[rid][2] == rb[rid][2]
    assert sim.read_fasta(tmp_path / "a.fasta") == a


def test_fixture_ids_differ_between_chemistries(tmp_path: Path) -> None:
    syn9 = sim.synthetic_kmer_model(9, seed=0, shift=6)
    a = sim.make_fixture_pod5(tmp_path / "a.pod5", n_reads=2, kmer_model=SYN6, read_length=200)
    b = sim.make_fixture_pod5(tmp_path / "b.pod5", n_reads=2, chemistry="r10.4.1",
                              kmer_model=syn9, read_length=200)
    assert set(a).isdisjoint(b)
    with pod5.Reader(tmp_path / "b.pod5") as reader:
        rec = next(reader.reads())
        assert rec.run_info.sample_rate == 5000
        assert rec.run_info.flow_cell_product_code == "FLO-PRO114M"


@pytest.mark.parametrize(("rate", "bps"), [(4000, 450.0), (5000, 400.0)])
def test_dwell_statistics(rate: int, bps: float) -> None:
    rng = np.random.default_rng(0)
    params = sim.SignalParams(stall_prob=0.0)
    dwell = sim.draw_dwells(200_000, rate / bps, rng, params)
    assert dwell.min() >= params.min_dwell
    assert dwell.mean() == pytest.approx(rate / bps, rel=0.01)
    cv = dwell.std() / dwell.mean()
    assert 0.3 < cv < 0.9  # neither constant nor wildly spread
    stalled = sim.draw_dwells(200_000, rate / bps, rng, sim.SignalParams(stall_prob=0.01))
    expected = rate / bps * (1 + 0.01 * sim.SignalParams().stall_mean)
    assert stalled.mean() == pytest.approx(expected, rel=0.05)


def _residuals(read: sim.SimulatedRead, model: sim.KmerModel, lag: int = 0) -> np.ndarray:
    """(pA - table level) / table sd per sample, with k-mers optionally misaligned by lag."""
    codes = sim.sequence_codes(read.sequence)
    kmers = sim.base_kmers(codes, model, np.random.default_rng(0))
    kmers = np.roll(kmers, lag)
    dwell = np.diff(read.base_starts)
    inner = slice(read.base_starts[model.k], read.base_starts[-model.k - 1])  # known flanks
    level = np.repeat(model.levels[kmers], dwell)[inner]
    sd = np.repeat(model.sds[kmers], dwell)[inner]
    return (read.signal_pa()[inner] - level) / sd


def _level_check(model: sim.KmerModel, chem: str) -> None:
    """Signal matches the table: residual mean ~0 and sd ~1; a shifted alignment does not."""
    seq = "".join(sim.BASES[i] for i in np.random.default_rng(1).integers(0, 4, 20_000))
    preset = sim.get_chemistry(chem)
    read = sim.simulate_read(seq, model, np.random.default_rng(2), sample_rate=4000,
                             bases_per_s=450, chemistry=chem, params=BARE)
    res = _residuals(read, model)
    assert abs(res.mean()) < 0.05
    assert res.std() == pytest.approx(1.0, rel=0.05)
    assert _residuals(read, model, lag=1).std() > 3.0  # a misaligned k-mer would show
    # the per-event share of the variance: per-base means scatter by sd * sqrt(frac)
    dwell = np.diff(read.base_starts)[model.k:-model.k - 1]
    idx = np.concatenate([[0], np.cumsum(dwell)[:-1]])
    base_mean = np.add.reduceat(res, idx) / dwell
    expect = preset.event_sd_frac + (1 - preset.event_sd_frac) / dwell
    assert np.mean(base_mean**2) == pytest.approx(expect.mean(), rel=0.1)


def test_level_statistics_synthetic_table() -> None:
    _level_check(SYN6, "r9.4.1")
    _level_check(sim.synthetic_kmer_model(9, seed=0, shift=6), "r10.4.1")


@pytest.mark.realdata
@pytest.mark.parametrize("chem", ["r9.4.1", "r10.4.1"])
def test_level_statistics_shared_table(chem: str) -> None:
    path = sim.shared_data_dir() / "kmer_models" / sim.get_chemistry(chem).kmer_file
    if not path.is_file():
        pytest.skip(f"{path} absent (needs ../shared/data or EDGECALL_SHARED_DATA)")
    model = sim.load_kmer_model(str(path))
    assert model.shift == sim.get_chemistry(chem).shift
    _level_check(model, chem)


@pytest.mark.realdata
def test_load_shared_r941_table() -> None:
    path = sim.shared_data_dir() / "kmer_models" / "dna_r9.4.1_400bps_6mer.tsv.gz"
    if not path.is_file():
        pytest.skip(f"{path} absent (needs ../shared/data or EDGECALL_SHARED_DATA)")
    model = sim.load_kmer_model(str(path))
    assert (model.k, model.shift, model.levels.size) == (6, 2, 4096)
    assert model.levels[0] == pytest.approx(86.4863)  # AAAAAA
    assert model.levels[1] == pytest.approx(83.9488)  # AAAAAC
    code = sim.kmer_codes(["TTTTTT"])[0]
    assert code == 4095


def test_event_share_of_variance() -> None:
    """With event_sd_frac=1 every base is flat: per-base sample sd is ~0 (ADC rounding only)."""
    seq = "ACGT" * 500
    flat = sim.simulate_read(seq, SYN6, np.random.default_rng(0), sample_rate=4000,
                             bases_per_s=450, params=sim.SignalParams(
                                 stall_prob=0, drift_pa=0, read_shift_sd=0, read_scale_sd=0,
                                 event_sd_frac=1.0))
    pa = flat.signal_pa()
    spread = [np.ptp(pa[a:b]) for a, b in zip(flat.base_starts[:-1], flat.base_starts[1:],
                                                strict=True)]
    assert max(spread) <= 2 * flat.scale + 1e-4
    noisy = sim.simulate_read(seq, SYN6, np.random.default_rng(0), sample_rate=4000,
                              bases_per_s=450, params=BARE)
    pa = noisy.signal_pa()
    assert max(np.ptp(pa[a:b]) for a, b in zip(noisy.base_starts[:-1], noisy.base_starts[1:],
                                                strict=True)) > 3.0


def test_substeps_and_correlated_noise() -> None:
    """R10.4.1 defaults: two jittered sub-levels per base and low-passed per-sample noise."""
    rng = np.random.default_rng(0)
    seq = "".join(sim.BASES[i] for i in rng.integers(0, 4, 3000))
    flat = dict(stall_prob=0, drift_pa=0, read_shift_sd=0, read_scale_sd=0)
    two = sim.simulate_read(seq, SYN6, rng, sample_rate=4000, bases_per_s=450,
                            chemistry="r10.4.1", params=sim.SignalParams(**flat,
                                                                         event_sd_frac=1.0))
    pa = two.signal_pa()
    levels = [np.unique(pa[a:b]).size for a, b in zip(two.base_starts[:-1], two.base_starts[1:],
                                                       strict=True)]
    assert max(levels) == 2 and np.mean(np.array(levels) == 2) > 0.5
    for phi in (0.0, 0.7):
        x = sim._noise(200_000, phi, rng)
        d = np.diff(x)
        assert x.std() == pytest.approx(1.0, rel=0.02)
        assert np.corrcoef(d[:-1], d[1:])[0, 1] == pytest.approx(-(1 - phi) / 2, abs=0.02)


def test_synthetic_table_is_plausible() -> None:
    model = sim.synthetic_kmer_model(9, seed=0)
    assert model.levels.size == 4**9 and model.shift == 4
    assert model.levels.mean() == pytest.approx(90.0, abs=0.5)
    assert model.levels.std() == pytest.approx(15.0, rel=0.05)
    assert np.median(model.sds) == pytest.approx(1.5, rel=0.05)
    again = sim.synthetic_kmer_model(9, seed=0)
    assert np.array_equal(model.levels, again.levels)
    assert not np.array_equal(model.levels, sim.synthetic_kmer_model(9, seed=1).levels)


def test_genome_fragments(tmp_path: Path) -> None:
    genome = "".join(sim.BASES[i] for i in np.random.default_rng(9).integers(0, 4, 5000))
    fa = tmp_path / "g.fa"
    fa.write_text(">chr\n" + genome[:2500] + "\n" + genome[2500:] + "\n")
    ds = sim.simulate_dataset(tmp_path / "out", 4, "r9.4.1", seed=1, read_length=300,
                              genome=str(fa), kmer_model=SYN6)
    rc = genome[::-1].translate(str.maketrans("ACGT", "TGCA"))
    seqs = sim.read_fasta(ds.fasta)
    assert len(seqs) == 4
    assert all(s in genome or s in rc for s in seqs.values())
    truth = sim.load_truth(ds.truth)
    back = _reads_back(ds.pod5)
    for rid, seq in seqs.items():
        assert truth[rid].size == len(seq) + 1 and truth[rid][-1] == back[rid][0].size
    assert ds.n_bases == sum(map(len, seqs.values()))


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    rc = main(["simulate", "--chemistry", "r9.4.1", "--n-reads", "2", "--out", str(out),
               "--read-length", "200", "--sample-rate", "5000", "--seed", "3"])
    assert rc == 0
    assert "wrote 2 reads" in capsys.readouterr().out
    with pod5.Reader(out / "reads.pod5") as reader:
        recs = list(reader.reads())
        assert len(recs) == 2 and recs[0].run_info.sample_rate == 5000
    assert len(sim.load_truth(out / "truth.npz")) == 2


@pytest.mark.parametrize("argv", [
    ["--chemistry", "r9.4.1", "--n-reads", "0"],
    ["--chemistry", "r9.4.1", "--n-reads", "2", "--sample-rate", "-5"],
    ["--chemistry", "r9.4.1", "--n-reads", "2", "--genome", "/nonexistent/g.fa"],
])
def test_cli_bad_args(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      argv: list[str]) -> None:
    rc = main(["simulate", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("tools simulate: error:") and err.count("\n") == 1


def test_cli_unknown_chemistry_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--chemistry", "r7", "--n-reads", "1", "--out", str(tmp_path)])


def test_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown chemistry"):
        sim.get_chemistry("r7")
    with pytest.raises(ValueError, match="empty"):
        sim.simulate_read("", SYN6, rng, sample_rate=4000, bases_per_s=450)
    with pytest.raises(ValueError, match="other than ACGT"):
        sim.simulate_read("ACGN", SYN6, rng, sample_rate=4000, bases_per_s=450)
    with pytest.raises(ValueError, match="positive"):
        sim.simulate_read("ACGT", SYN6, rng, sample_rate=0, bases_per_s=450)
    with pytest.raises(ValueError, match="k must be"):
        sim.synthetic_kmer_model(0)
    with pytest.raises(ValueError, match="no reads"):
        sim.write_pod5("/tmp/never.pod5", [], chemistry="r9.4.1")


def test_bad_kmer_table(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("kmer\tlevel\nAA\t1\n")
    with pytest.raises(ValueError, match="not a k-mer table"):
        sim.load_kmer_model(str(bad))
    short = tmp_path / "short.tsv"
    short.write_text("kmer\tlevel_mean_pA\tlevel_sd_pA\nA\t1\t1\nC\t2\t1\n")
    with pytest.raises(ValueError, match="expected 4"):
        sim.load_kmer_model(str(short))
