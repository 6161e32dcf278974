"""K-mer current tables: load the shared/data tsv tables or make a synthetic one.

A table maps every k-mer (code ``sum(b_j * 4**(k-1-j))`` with A=0, C=1, G=2,
T=3) to a mean level and sd in pA; ``shift`` is the k-mer position of the
current base (uncalled4's ``_shift``). Used by :mod:`tools.simulate`; numpy only.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

BASES = "ACGT"
_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _CODE[ord(_b)] = _i
    _CODE[ord(_b.lower())] = _i

#: uncalled4's current-base position for the tables in shared/data/kmer_models.
KNOWN_SHIFTS = {"dna_r9.4.1_400bps_6mer.tsv.gz": 2, "dna_r10.4.1_400bps_9mer.tsv.gz": 6}


@dataclass(frozen=True, slots=True)
class KmerModel:
    """A k-mer current table: level mean and sd in pA, indexed by the k-mer's base-4 code.

    The code of a k-mer ``b0 b1 ... b(k-1)`` (A=0, C=1, G=2, T=3) is
    ``sum(b_j * 4**(k-1-j))``; ``shift`` is the position of the current base.
    """

    k: int
    shift: int
    levels: np.ndarray  # float32 [4**k]
    sds: np.ndarray  # float32 [4**k]
    name: str = ""


def shared_data_dir() -> Path:
    """``$EDGECALL_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("EDGECALL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def kmer_codes(kmers: Sequence[str]) -> np.ndarray:
    """Base-4 codes of equal-length k-mer strings (A=0, C=1, G=2, T=3)."""
    k = len(kmers[0])
    raw = np.frombuffer("".join(kmers).encode("ascii"), dtype=np.uint8).reshape(len(kmers), k)
    codes = _CODE[raw]
    if (codes == 255).any():
        raise ValueError("k-mer table has a k-mer with a base other than ACGT")
    return codes.astype(np.int64) @ (4 ** np.arange(k - 1, -1, -1, dtype=np.int64))


@lru_cache(maxsize=4)
def load_kmer_model(path: str | os.PathLike[str], shift: int | None = None) -> KmerModel:
    """Load a k-mer table (tsv or tsv.gz with ``kmer level_mean_pA level_sd_pA ...``).

    Parameters
    ----------
    path
        The table, e.g. ``shared/data/kmer_models/dna_r9.4.1_400bps_6mer.tsv.gz``.
    shift
        Position of the current base in the k-mer; default: :data:`KNOWN_SHIFTS`
        for the shared/data tables, else ``k // 2``.

    Returns
    -------
    KmerModel
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    except OSError as exc:
        raise ValueError(f"{p}: cannot read k-mer table ({exc})") from exc
    need = ("kmer", "level_mean_pA", "level_sd_pA")
    if any(c not in header for c in need) or not rows:
        raise ValueError(f"{p}: not a k-mer table (need columns {', '.join(need)})")
    cols = list(zip(*rows, strict=True))
    kmers = cols[header.index("kmer")]
    k = len(kmers[0])
    if len(kmers) != 4**k:
        raise ValueError(f"{p}: has {len(kmers)} k-mers, expected 4**{k}")
    order = np.argsort(kmer_codes(kmers))
    levels = np.asarray(cols[header.index("level_mean_pA")], dtype=np.float32)[order]
    sds = np.asarray(cols[header.index("level_sd_pA")], dtype=np.float32)[order]
    if shift is None:
        shift = KNOWN_SHIFTS.get(p.name, k // 2)
    return KmerModel(k=k, shift=shift, levels=levels, sds=sds, name=p.name)


def synthetic_kmer_model(k: int, seed: int = 0, shift: int | None = None) -> KmerModel:
    """A plausible made-up k-mer table for machines without shared/data.

    Levels are a position-weighted sum of per-base effects (strongest at the
    current base) plus a small interaction term, rescaled to ~N(90, 15) pA;
    sds are ~1.5 pA.

    Parameters
    ----------
    k
        K-mer length (1..10).
    seed
        Seed of the table; the same seed gives the same table.
    shift
        Position of the current base; default ``k // 2``.
    """
    if not 1 <= k <= 10:
        raise ValueError(f"k must be in 1..10, got {k}")
    shift = k // 2 if shift is None else shift
    rng = np.random.default_rng(seed)
    codes = np.arange(4**k, dtype=np.int64)
    digits = (codes[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4  # [4**k, k]
    weight = np.exp(-0.5 * ((np.arange(k) - shift) / max(1.0, k / 3)) ** 2)
    effect = rng.normal(0.0, 1.0, size=(k, 4)) * weight[:, None]
    level = effect[np.arange(k), digits].sum(axis=1) + rng.normal(0.0, 0.15, size=codes.size)
    level = 90.0 + 15.0 * (level - level.mean()) / level.std()
    sds = 1.5 * np.exp(rng.normal(0.0, 0.1, size=codes.size))
    return KmerModel(k=k, shift=shift, levels=level.astype(np.float32),
                     sds=sds.astype(np.float32), name=f"synthetic_k{k}_seed{seed}")
