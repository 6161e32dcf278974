"""Simulate nanopore reads from sequence with a k-mer current model, written as real pod5.

Signal model, per read:

- each base holds the level of the k-mer around it (``shift`` = the k-mer
  position of the current base, as in uncalled4) for ``min_dwell`` samples plus
  a rounded log-normal number (sigma ``dwell_sigma``), with mean
  ``sample_rate / bases_per_s`` samples in all; with probability ``stall_prob``
  a base stalls for an extra exponential number of samples (mean ``stall_mean``
  dwells). Dorado move tables of real R10.4.1 reads at 4 kHz (remora_can) show
  median 10, mean 13 samples per base, a long right tail;
- each sample is ``level + event jitter + sample noise``; the event jitter and
  the per-sample noise together have the table's sd, ``event_sd_frac`` of the
  variance being per event. R10.4.1 (``substeps=2``): each base is two
  sub-events (random split, each jittered) and the per-sample noise is
  low-passed (``noise_ar=0.7``), which matches real remora_can/squigualiser
  reads at 4 kHz (robust sample-to-sample noise ~2.2 pA, near-zero lag-1
  correlation of differences); R9.4.1's 1.5 pA table sd is per-sample noise;
- a slow random-walk drift (``drift_pa`` pA per second) and a per-read
  shift/scale (``read_shift_sd`` pA, ``read_scale_sd``) are added on top;
- the pA signal is digitised with the chemistry's ADC calibration
  (``pA = (raw + offset) * scale``) into int16.

The truth for every read is its sequence (FASTA beside the pod5) and
``base_starts`` (sample index where each base starts; ``truth.npz`` from
:func:`simulate_dataset`). Only numpy and pod5 are needed (no torch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import logging
import os
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tools.kmer_model import (  # noqa: F401 - re-exported for callers of tools.simulate
    _CODE,
    BASES,
    KmerModel,
    kmer_codes,
    load_kmer_model,
    shared_data_dir,
    synthetic_kmer_model,
)

if TYPE_CHECKING:
    import pod5

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Chemistry:
    """Run-level constants of a simulated chemistry (pod5 run info and signal scale)."""

    name: str
    k: int
    shift: int
    kmer_file: str
    sample_rate: int
    bases_per_s: float
    flow_cell_product_code: str
    sequencing_kit: str
    adc_min: int
    adc_max: int
    calib_offset: float
    calib_range: float
    event_sd_frac: float
    substeps: int
    noise_ar: float
    n_channels: int
    system_type: str
    sequencer_position_type: str
    basecall_config: str


CHEMISTRIES: dict[str, Chemistry] = {
    "r9.4.1": Chemistry(
        name="r9.4.1", k=6, shift=2, kmer_file="dna_r9.4.1_400bps_6mer.tsv.gz",
        sample_rate=4000, bases_per_s=450.0, flow_cell_product_code="FLO-MIN106",
        sequencing_kit="sqk-lsk109", adc_min=-4096, adc_max=4095, calib_offset=13.0,
        calib_range=1467.6, event_sd_frac=0.0, substeps=1, noise_ar=0.0, n_channels=512,
        system_type="minion_mk1b",
        sequencer_position_type="minion_mk1b", basecall_config="dna_r9.4.1_450bps_hac.cfg"),
    "r10.4.1": Chemistry(
        name="r10.4.1", k=9, shift=6, kmer_file="dna_r10.4.1_400bps_9mer.tsv.gz",
        sample_rate=5000, bases_per_s=400.0, flow_cell_product_code="FLO-PRO114M",
        sequencing_kit="sqk-lsk114", adc_min=0, adc_max=2047, calib_offset=-253.0,
        calib_range=299.43, event_sd_frac=0.5, substeps=2, noise_ar=0.7, n_channels=3000,
        system_type="PRO-PRC048",
        sequencer_position_type="promethion",
        basecall_config="dna_r10.4.1_e8.2_400bps_5khz_hac_prom.cfg"),
}


@dataclass(frozen=True, slots=True)
class SignalParams:
    """Knobs of the signal model (see the module docstring); defaults are realistic."""

    min_dwell: int = 2
    dwell_sigma: float = 0.7  # log-normal sigma of the dwell above min_dwell
    stall_prob: float = 0.004
    stall_mean: float = 15.0  # extra stall length in mean dwells
    noise_scale: float = 1.0  # multiplies the table sd
    event_sd_frac: float | None = None  # None = the chemistry's value
    substeps: int | None = None  # sub-events per base, each with its own jitter
    noise_ar: float | None = None  # AR(1)-like correlation of the per-sample noise
    drift_pa: float = 1.0  # random-walk step per second, pA
    read_shift_sd: float = 3.0  # per-read level shift, pA
    read_scale_sd: float = 0.04  # per-read relative scale


@dataclass(frozen=True, slots=True)
class SimulatedRead:
    """One simulated read with its truth: ``base_starts[i]`` is where base i starts.

    ``base_starts`` has ``len(sequence) + 1`` entries; the last is the signal length.
    """

    read_id: str
    sequence: str
    signal: np.ndarray  # int16 raw
    offset: float
    scale: float
    base_starts: np.ndarray  # int64 [len(sequence) + 1]
    sample_rate: int
    channel: int = 1
    well: int = 1
    read_number: int = 0
    start_sample: int = 0

    def signal_pa(self) -> np.ndarray:
        """Calibrated signal in pA (float32)."""
        return (self.signal.astype(np.float32) + np.float32(self.offset)) * np.float32(self.scale)


@dataclass(frozen=True, slots=True)
class SimulatedDataset:
    """Files written by :func:`simulate_dataset` and their totals."""

    pod5: Path
    fasta: Path
    truth: Path
    n_reads: int
    n_bases: int
    n_samples: int


# ---------------------------------------------------------------------------- k-mer tables


def get_chemistry(name: str) -> Chemistry:
    """The preset for a chemistry name (``r9.4.1`` or ``r10.4.1``)."""
    try:
        return CHEMISTRIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown chemistry {name!r} (known: {', '.join(CHEMISTRIES)})") from None


def default_kmer_model(chemistry: str | Chemistry) -> KmerModel:
    """The shared/data table of a chemistry if present, else a synthetic one (seed 0)."""
    chem = chemistry if isinstance(chemistry, Chemistry) else get_chemistry(chemistry)
    path = shared_data_dir() / "kmer_models" / chem.kmer_file
    if path.is_file():
        return load_kmer_model(str(path), chem.shift)
    log.info("%s absent: using a synthetic %d-mer table", path, chem.k)
    return synthetic_kmer_model(chem.k, seed=0, shift=chem.shift)


# ---------------------------------------------------------------------------- signal


def sequence_codes(seq: str) -> np.ndarray:
    """uint8 codes (A=0..T=3) of an ACGT sequence; ValueError on other letters."""
    codes = _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
    if (codes == 255).any():
        raise ValueError("sequence contains letters other than ACGT")
    return codes


def base_kmers(codes: np.ndarray, model: KmerModel, rng: np.random.Generator) -> np.ndarray:
    """The k-mer code of every base (random flanking bases pad the ends)."""
    left = rng.integers(0, 4, model.shift)
    right = rng.integers(0, 4, model.k - model.shift - 1)
    padded = np.concatenate([left, codes, right]).astype(np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(padded, model.k)
    return windows @ (4 ** np.arange(model.k - 1, -1, -1, dtype=np.int64))


def draw_dwells(n: int, mean: float, rng: np.random.Generator,
                params: SignalParams) -> np.ndarray:
    """Per-base dwell in samples: min_dwell + rounded log-normal, mean ``mean``, plus stalls."""
    extra = max(mean - params.min_dwell, 1e-9)
    mu = np.log(extra) - params.dwell_sigma**2 / 2
    dwell = params.min_dwell + np.rint(rng.lognormal(mu, params.dwell_sigma, n)).astype(np.int64)
    stalls = rng.random(n) < params.stall_prob
    if stalls.any():
        dwell[stalls] += np.rint(rng.exponential(params.stall_mean * mean, int(stalls.sum()))
                                 ).astype(np.int64)
    return dwell


def simulate_read(seq: str, model: KmerModel, rng: np.random.Generator, *,
                  sample_rate: int, bases_per_s: float,
                  chemistry: str | Chemistry = "r9.4.1",
                  params: SignalParams = SignalParams(),
                  read_id: str | None = None) -> SimulatedRead:
    """Simulate the raw signal of one read.

    Parameters
    ----------
    seq
        The true sequence (A/C/G/T only), in signal order.
    model
        K-mer current table in pA.
    rng
        Source of randomness (the read is a pure function of its state).
    sample_rate, bases_per_s
        Mean dwell is ``sample_rate / bases_per_s`` samples per base.
    chemistry
        Supplies the ADC calibration (offset, range, digitisation) and the
        default ``event_sd_frac``.
    params
        Signal model knobs; ``SignalParams(stall_prob=0, drift_pa=0,
        read_shift_sd=0, read_scale_sd=0)`` gives the bare table statistics.
    read_id
        Default: a UUID4 drawn from ``rng``.

    Returns
    -------
    SimulatedRead
        int16 signal, calibration and the true ``base_starts``.
    """
    chem = chemistry if isinstance(chemistry, Chemistry) else get_chemistry(chemistry)
    if not seq:
        raise ValueError("cannot simulate an empty sequence")
    if sample_rate <= 0 or bases_per_s <= 0:
        raise ValueError("sample rate and bases per second must be positive")
    codes = sequence_codes(seq)
    rid = read_id or str(uuid.UUID(bytes=rng.bytes(16), version=4))
    kmers = base_kmers(codes, model, rng)
    dwell = draw_dwells(codes.size, sample_rate / bases_per_s, rng, params)
    starts = np.concatenate([[0], np.cumsum(dwell)]).astype(np.int64)
    n = int(starts[-1])
    frac = chem.event_sd_frac if params.event_sd_frac is None else params.event_sd_frac
    steps = chem.substeps if params.substeps is None else params.substeps
    phi = chem.noise_ar if params.noise_ar is None else params.noise_ar
    sd = model.sds[kmers].astype(np.float64) * params.noise_scale
    pa = _levels(model.levels[kmers], sd * np.sqrt(frac), dwell, steps, rng)
    pa += _noise(n, phi, rng) * np.repeat(sd * np.sqrt(1 - frac), dwell)
    pa = pa * (1.0 + rng.normal(0.0, params.read_scale_sd)) + rng.normal(0.0,
                                                                        params.read_shift_sd)
    pa += _drift(n, sample_rate, params.drift_pa, rng)
    offset, scale = calibration(chem)
    raw = np.clip(np.rint(pa / scale - offset), chem.adc_min, chem.adc_max).astype(np.int16)
    return SimulatedRead(read_id=rid, sequence=seq.upper(), signal=raw, offset=offset,
                         scale=scale, base_starts=starts, sample_rate=sample_rate)


def _levels(level: np.ndarray, jitter_sd: np.ndarray, dwell: np.ndarray, steps: int,
            rng: np.random.Generator) -> np.ndarray:
    """Piecewise-constant pA: each base split into ``steps`` sub-events, each jittered.

    Sub-event jitter is ``jitter_sd * sqrt(steps)`` so a base's mean keeps ~``jitter_sd``.
    """
    if steps <= 1:
        return np.repeat(level + rng.normal(0.0, 1.0, level.size) * jitter_sd, dwell)
    cuts = np.sort(rng.random((dwell.size, steps - 1)), axis=1)
    edges = np.rint(np.concatenate([np.zeros((dwell.size, 1)), cuts, np.ones((dwell.size, 1))],
                                   axis=1) * dwell[:, None]).astype(np.int64)
    sub = np.diff(edges, axis=1)  # [bases, steps], rows sum to dwell
    jitter = rng.normal(0.0, 1.0, sub.shape) * (jitter_sd * np.sqrt(steps))[:, None]
    return np.repeat((level[:, None] + jitter).ravel(), sub.ravel())


def _noise(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise; for ``phi > 0`` low-passed by a truncated AR(1) kernel."""
    if phi <= 0:
        return rng.normal(0.0, 1.0, n)
    taps = phi ** np.arange(max(2, int(np.ceil(np.log(1e-3) / np.log(phi)))))
    taps /= np.sqrt(np.sum(taps**2))
    return np.convolve(rng.normal(0.0, 1.0, n + taps.size), taps, mode="valid")[:n]


def _drift(n: int, sample_rate: int, step_pa: float, rng: np.random.Generator) -> np.ndarray:
    """A random walk with one knot per second, linearly interpolated (pA)."""
    knots = n // sample_rate + 2
    walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, 1.0, knots - 1))]) * step_pa
    return np.interp(np.arange(n) / sample_rate, np.arange(knots), walk)


def calibration(chem: Chemistry) -> tuple[float, float]:
    """(offset, scale) of the chemistry's ADC, exactly representable as pod5's float32."""
    digitisation = chem.adc_max - chem.adc_min + 1
    return (float(np.float32(chem.calib_offset)),
            float(np.float32(chem.calib_range / digitisation)))


# ---------------------------------------------------------------------------- pod5 + FASTA


def run_info(chem: Chemistry, sample_rate: int, seed: int) -> pod5.RunInfo:
    """A pod5 RunInfo for a simulated run (ids derived from ``seed``)."""
    import pod5

    rng = np.random.default_rng([seed, 7])
    acq = rng.bytes(20).hex()
    prun = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seed % 86400)
    fc_id = f"SIM{seed % 100000:05d}"
    kit = chem.sequencing_kit
    protocol = (f"sequencing/sequencing_{chem.flow_cell_product_code.split('-')[1]}_DNA_"
                f"{kit.upper()}:{chem.flow_cell_product_code}:{kit.upper()}")
    context = {"experiment_type": "genomic_dna", "sample_frequency": str(sample_rate),
               "sequencing_kit": kit, "basecall_config_filename": chem.basecall_config,
               "package": "edgecall-simulate", "simulated": "1"}
    tracking = {"run_id": acq, "flow_cell_id": fc_id, "sample_id": "simulated",
                "flow_cell_product_code": chem.flow_cell_product_code,
                "protocol_run_id": prun, "exp_script_name": protocol,
                "device_type": chem.sequencer_position_type, "simulator_seed": str(seed)}
    return pod5.RunInfo(
        acquisition_id=acq, acquisition_start_time=start, adc_max=chem.adc_max,
        adc_min=chem.adc_min, context_tags=context, experiment_name="edgecall-simulated",
        flow_cell_id=fc_id, flow_cell_product_code=chem.flow_cell_product_code,
        protocol_name=protocol, protocol_run_id=prun, protocol_start_time=start,
        sample_id="simulated", sample_rate=sample_rate, sequencing_kit=kit,
        sequencer_position="SIM1", sequencer_position_type=chem.sequencer_position_type,
        software="edgecall tools.simulate", system_name="simulator",
        system_type=chem.system_type, tracking_id=tracking)


def write_pod5(path: str | os.PathLike[str], reads: Sequence[SimulatedRead], *,
               chemistry: str | Chemistry, seed: int = 0,
               fasta: str | os.PathLike[str] | None = None) -> Path:
    """Write simulated reads as a real pod5 file plus their true sequences as FASTA.

    Parameters
    ----------
    path
        The pod5 to write (replaced if it exists; written under a temporary name first).
    reads
        Reads from :func:`simulate_read`, all at the same sample rate.
    chemistry
        Chemistry preset for the run info (flow cell, kit, ADC range).
    seed
        Seeds the run ids (acquisition id, flow cell id).
    fasta
        Where the true sequences go; default: ``path`` with suffix ``.fasta``.

    Returns
    -------
    Path
        The FASTA path.
    """
    import pod5

    chem = chemistry if isinstance(chemistry, Chemistry) else get_chemistry(chemistry)
    if not reads:
        raise ValueError("no reads to write")
    rates = {r.sample_rate for r in reads}
    if len(rates) != 1:
        raise ValueError(f"reads have several sample rates {sorted(rates)}; one pod5 needs one")
    path = Path(path)
    info = run_info(chem, rates.pop(), seed)
    end = pod5.EndReason(reason=pod5.EndReasonEnum.SIGNAL_POSITIVE, forced=False)
    records = [pod5.Read(
        read_id=uuid.UUID(r.read_id), pore=pod5.Pore(channel=r.channel, well=r.well,
                                                     pore_type="not_set"),
        calibration=pod5.Calibration(offset=r.offset, scale=r.scale),
        read_number=r.read_number, start_sample=r.start_sample, median_before=220.0,
        end_reason=end, run_info=info, signal=r.signal) for r in reads]
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pod5.Writer(tmp, software_name="edgecall tools.simulate") as writer:
        writer.add_reads(records)
    os.replace(tmp, path)
    fasta_path = Path(fasta) if fasta is not None else path.with_suffix(".fasta")
    write_fasta(fasta_path, {r.read_id: r.sequence for r in reads})
    return fasta_path


def write_fasta(path: Path, seqs: Mapping[str, str], width: int = 80) -> None:
    """Write sequences as FASTA (``>id`` lines, wrapped)."""
    with open(path, "w") as fh:
        for name, seq in seqs.items():
            fh.write(f">{name}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i:i + width] + "\n")


def read_fasta(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a (optionally gzipped) FASTA into ``{first word of header: sequence}``."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    seqs: dict[str, list[str]] = {}
    name = None
    with opener(p, "rt") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                name = line[1:].split()[0] if line[1:].split() else f"record{len(seqs)}"
                seqs[name] = []
            elif line and name is not None:
                seqs[name].append(line)
    if not seqs:
        raise ValueError(f"{p}: no FASTA records")
    return {k: "".join(v).upper() for k, v in seqs.items()}


# ---------------------------------------------------------------------------- datasets


def random_sequences(n: int, rng: np.random.Generator, read_length: int, *,
                     genome: Mapping[str, str] | None = None) -> list[str]:
    """Read sequences: uniform random bases, or random-strand fragments of ``genome``.

    Lengths are gamma distributed (shape 6) around ``read_length``, at least
    ``min(100, read_length)``; non-ACGT genome letters become random bases.
    """
    if read_length < 1 or n < 0:
        raise ValueError("read length must be positive and the read count non-negative")
    lengths = np.maximum(np.rint(rng.gamma(6.0, read_length / 6.0, n)).astype(int),
                         min(100, read_length))
    out = []
    contigs = [s for s in (genome or {}).values() if s]
    weights = np.array([len(s) for s in contigs], dtype=float)
    for length in lengths:
        if not contigs:
            out.append("".join(BASES[i] for i in rng.integers(0, 4, length)))
            continue
        seq = contigs[int(rng.choice(len(contigs), p=weights / weights.sum()))]
        start = int(rng.integers(0, max(1, len(seq) - length + 1)))
        frag = seq[start:start + length]
        if rng.random() < 0.5:
            frag = frag[::-1].translate(str.maketrans("ACGTacgt", "TGCAtgca"))
        out.append(_fill_ambiguous(frag.upper(), rng))
    return out


def _fill_ambiguous(seq: str, rng: np.random.Generator) -> str:
    """Replace letters other than ACGT by random bases."""
    codes = _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
    bad = codes == 255
    if bad.any():
        codes = codes.copy()
        codes[bad] = rng.integers(0, 4, int(bad.sum()))
    return np.frombuffer(b"ACGT", dtype=np.uint8)[codes].tobytes().decode("ascii")


def simulate_reads(seqs: Iterable[str], chemistry: str | Chemistry, seed: int, *,
                   sample_rate: int | None = None, model: KmerModel | None = None,
                   params: SignalParams = SignalParams()) -> list[SimulatedRead]:
    """Simulate one read per sequence with run-like channel/read-number metadata."""
    chem = chemistry if isinstance(chemistry, Chemistry) else get_chemistry(chemistry)
    model = model or default_kmer_model(chem)
    rate = sample_rate or chem.sample_rate
    rng = np.random.default_rng([seed, 1, zlib.crc32(chem.name.encode())])
    reads, clock = [], 0
    for i, seq in enumerate(seqs):
        r = simulate_read(seq, model, rng, sample_rate=rate, bases_per_s=chem.bases_per_s,
                          chemistry=chem, params=params)
        clock += int(rng.integers(rate, 20 * rate))
        reads.append(replace(r, channel=int(rng.integers(1, chem.n_channels + 1)),
                             well=int(rng.integers(1, 5)), read_number=i + 1,
                             start_sample=clock))
        clock += r.signal.size
    return reads


def write_truth(path: Path, reads: Sequence[SimulatedRead]) -> None:
    """Save every read's ``base_starts`` (npz: read_id, starts, offsets into starts)."""
    offsets = np.cumsum([0] + [r.base_starts.size for r in reads]).astype(np.int64)
    np.savez_compressed(path, read_id=np.array([r.read_id for r in reads]),
                        starts=np.concatenate([r.base_starts for r in reads]),
                        offsets=offsets)


def load_truth(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``{read_id: base_starts}`` from a ``truth.npz`` written by :func:`simulate_dataset`."""
    with np.load(path) as z:
        ids, starts, offs = z["read_id"], z["starts"], z["offsets"]
    return {str(rid): starts[offs[i]:offs[i + 1]] for i, rid in enumerate(ids)}


def simulate_dataset(out_dir: str | os.PathLike[str], n_reads: int, chemistry: str,
                     seed: int = 0, *, read_length: int = 2000,
                     genome: str | os.PathLike[str] | None = None,
                     sample_rate: int | None = None, kmer_model: KmerModel | None = None,
                     params: SignalParams = SignalParams()) -> SimulatedDataset:
    """Simulate ``n_reads`` reads into ``out_dir/reads.pod5``, ``reads.fasta``, ``truth.npz``.

    Parameters
    ----------
    out_dir
        Output folder (created).
    n_reads
        Number of reads (at least 1).
    chemistry
        ``r9.4.1`` or ``r10.4.1``.
    seed
        Everything (sequences, signals, ids) is a function of the seed.
    read_length
        Mean read length in bases.
    genome
        FASTA to draw fragments from (both strands); default uniform random sequence.
    sample_rate
        Default: the chemistry's (4000 for r9.4.1, 5000 for r10.4.1).
    kmer_model
        Default: the shared/data table if present, else a synthetic one.
    params
        Signal model knobs.

    Returns
    -------
    SimulatedDataset
    """
    if n_reads < 1:
        raise ValueError(f"need at least one read, got {n_reads}")
    chem = get_chemistry(chemistry)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = read_fasta(genome) if genome is not None else None
    seqs = random_sequences(n_reads, np.random.default_rng([seed, 0]), read_length, genome=ref)
    reads = simulate_reads(seqs, chem, seed, sample_rate=sample_rate, model=kmer_model,
                           params=params)
    write_pod5(out / "reads.pod5", reads, chemistry=chem, seed=seed, fasta=out / "reads.fasta")
    write_truth(out / "truth.npz", reads)
    return SimulatedDataset(pod5=out / "reads.pod5", fasta=out / "reads.fasta",
                            truth=out / "truth.npz", n_reads=len(reads),
                            n_bases=sum(len(r.sequence) for r in reads),
                            n_samples=sum(r.signal.size for r in reads))


def make_fixture_pod5(path: str | os.PathLike[str], n_reads: int = 4,
                      chemistry: str = "r9.4.1", seed: int = 0,
                      kmer_model: KmerModel | None = None, *, read_length: int = 1500,
                      sample_rate: int | None = None) -> dict[str, str]:
    """Write a small simulated pod5 (+ FASTA beside it) for tests.

    Parameters
    ----------
    path
        The pod5 file to write.
    n_reads, read_length
        Number of reads and their mean length in bases (keep both small).
    chemistry
        ``r9.4.1`` (FLO-MIN106, 4 kHz) or ``r10.4.1`` (FLO-PRO114M, 5 kHz).
    seed
        The same seed gives the same reads, ids and signals.
    kmer_model
        Default: the shared/data table if present, else a synthetic one.
    sample_rate
        Default: the chemistry's.

    Returns
    -------
    dict[str, str]
        ``{read_id: true sequence}`` in file order.
    """
    if n_reads < 1:
        raise ValueError(f"need at least one read, got {n_reads}")
    chem = get_chemistry(chemistry)
    seqs = random_sequences(n_reads, np.random.default_rng([seed, 0]), read_length)
    reads = simulate_reads(seqs, chem, seed, sample_rate=sample_rate, model=kmer_model)
    write_pod5(path, reads, chemistry=chem, seed=seed)
    return {r.read_id: r.sequence for r in reads}


# ---------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` subcommand."""
    p = subparsers.add_parser("simulate", help="simulate reads from a k-mer model into pod5",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--chemistry", choices=sorted(CHEMISTRIES), required=True)
    p.add_argument("--n-reads", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--genome", help="FASTA to draw read sequences from (default: random)")
    p.add_argument("--sample-rate", type=int, help="Hz (default: the chemistry's)")
    p.add_argument("--read-length", type=int, default=2000, help="mean read length, bases")
    p.add_argument("--kmer-model", help="k-mer table tsv(.gz) (default: shared/data's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``simulate`` from parsed arguments."""
    if args.n_reads < 1:
        raise ValueError(f"--n-reads must be at least 1, got {args.n_reads}")
    if args.sample_rate is not None and args.sample_rate <= 0:
        raise ValueError(f"--sample-rate must be positive, got {args.sample_rate}")
    if args.genome and not Path(args.genome).is_file():
        raise ValueError(f"{args.genome}: genome FASTA not found")
    model = load_kmer_model(args.kmer_model) if args.kmer_model else None
    ds = simulate_dataset(args.out, args.n_reads, args.chemistry, args.seed,
                          read_length=args.read_length, genome=args.genome,
                          sample_rate=args.sample_rate, kmer_model=model)
    print(f"wrote {ds.n_reads} reads, {ds.n_bases} bases, {ds.n_samples} samples: "
          f"{ds.pod5}, {ds.fasta}, {ds.truth}")
    return 0
