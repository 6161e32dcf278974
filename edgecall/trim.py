"""Adapter trimming: find the sequencing adapter at a read's start and cut it off (``ts:i``).

Adapter sequences are the top strands in Oxford Nanopore's public chemistry
documentation (Chemistry Technical Document, "Adapter sequences"): the Y-adapter
of the R9.4.1 ligation kits (SQK-LSK108/LSK109), the Ligation/Native/Rapid
Adapter of the Kit 10/14 kits (SQK-LSK110/LSK114, SQK-RAD114, ...) and the rapid
adapter of SQK-RAD004. They are searched for with edlib (infix alignment, edit
distance) in the first bases of each read; the read is cut after the best hit.
A cut moves ``ts`` (samples trimmed from the signal's start) to the first kept
base's frame and drops the moves before it, so ``mv`` still maps ``signal[ts:ns]``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from edgecall.decode import mean_qscore
from edgecall.errors import EdgecallError
from edgecall.types import CalledRead

log = logging.getLogger(__name__)

ADAPTERS = {
    "y_adapter": "AATGTACTTCGTTCAGTTACGTATTGCT",  # SQK-LSK108/LSK109 Y-adapter top strand
    "ligation": "TTTTTTTTCCTGTACTTCGTTCAGTTACGTATTGCT",  # LA/NA/RA top strand (kit 10/14)
    "rapid_r9": "GTTTTCGCATTTATCGTGAAACGCTTTCGCGTTTTTCGTGCGCCGCTTCA",  # SQK-RAD004
}
KIT_ADAPTERS = {
    "sqk-lsk108": ("y_adapter",), "sqk-lsk109": ("y_adapter",),
    "sqk-lsk110": ("ligation",), "sqk-lsk111": ("ligation",), "sqk-lsk112": ("ligation",),
    "sqk-lsk114": ("ligation",), "sqk-nbd114-24": ("ligation",), "sqk-nbd114-96": ("ligation",),
    "sqk-rad004": ("rapid_r9",), "sqk-rbk004": ("rapid_r9",),
    "sqk-rad114": ("ligation",), "sqk-rbk114-24": ("ligation",), "sqk-rbk114-96": ("ligation",),
}
WINDOW = 80  # bases at the read start searched (hits on R9.4.1 E. coli reads end by base 40)
MAX_ERROR = 0.3  # edits per adapter base for a hit


@dataclass(frozen=True, slots=True)
class Hit:
    """An adapter found at a read's start: its name, where it ends (exclusive) and edits."""

    adapter: str
    end: int
    edits: int


def adapters_for(kit: str) -> tuple[str, ...]:
    """The adapter names to look for with a sequencing kit (all of them when unknown)."""
    return KIT_ADAPTERS.get(kit.lower(), tuple(ADAPTERS))


def find_adapter(seq: str, names: tuple[str, ...], *, window: int = WINDOW,
                 max_error: float = MAX_ERROR) -> Hit | None:
    """The best adapter hit in the first ``window`` bases of ``seq``, or None."""
    try:
        import edlib
    except ImportError:
        raise EdgecallError("adapter trimming needs edlib (pip install edlib), "
                            "or use --no-trim") from None
    head = seq[:window]
    best: Hit | None = None
    for name in names:
        adapter = ADAPTERS[name]
        k = int(len(adapter) * max_error)
        if len(head) < len(adapter) - k:
            continue
        got = edlib.align(adapter, head, mode="HW", task="locations", k=k)
        dist = got["editDistance"]
        if dist < 0 or not got["locations"]:
            continue
        end = max(e for _s, e in got["locations"]) + 1
        if best is None or dist / len(adapter) < best.edits / len(ADAPTERS[best.adapter]):
            best = Hit(name, end, dist)
    return best


def trim_start(r: CalledRead, n_bases: int) -> CalledRead:
    """Cut the first ``n_bases`` off a read: sequence, qualities, moves and ``ts``."""
    if n_bases <= 0:
        return r
    n_bases = min(n_bases, len(r.sequence))
    frames = np.flatnonzero(np.asarray(r.moves) == 1)
    first = int(frames[n_bases]) if n_bases < frames.size else int(r.moves.shape[0])
    quality = r.quality[n_bases:]
    quals = np.frombuffer(quality.encode("ascii"), dtype=np.uint8).astype(np.int32) - 33
    return dataclasses.replace(
        r, sequence=r.sequence[n_bases:], quality=quality, moves=r.moves[first:],
        trimmed_samples=r.trimmed_samples + first * r.stride, mean_qscore=mean_qscore(quals))


class Trimmer:
    """Trims the kit's adapter off each read's start; counts what it did.

    The kit is each read's own (pod5 run info) unless ``kit`` names one for all.
    """

    def __init__(self, *, kit: str = "", window: int = WINDOW,
                 max_error: float = MAX_ERROR) -> None:
        if kit and kit.lower() not in KIT_ADAPTERS:
            raise EdgecallError(f"unknown kit {kit!r} (known: {', '.join(sorted(KIT_ADAPTERS))})")
        self.kit, self.window, self.max_error = kit, window, max_error
        self.reads = self.trimmed = self.bases = 0

    def __call__(self, r: CalledRead) -> CalledRead:
        """The read with its adapter (if found) cut off."""
        self.reads += 1
        hit = find_adapter(r.sequence, adapters_for(self.kit or r.run.sequencing_kit),
                           window=self.window, max_error=self.max_error)
        if hit is None or hit.end >= len(r.sequence):
            return r
        self.trimmed += 1
        self.bases += min(hit.end, len(r.sequence))
        return trim_start(r, hit.end)
