"""Evaluate a basecaller against a reference: mappy identities, JSON for model cards.

Identity of one read = ``1 - NM / blen`` of its primary mappy ``map-ont`` hit
(matches / (matches + mismatches + insertions + deletions)); reads without a hit
are unmapped and count in ``reads - mapped``.
"""

from __future__ import annotations

import statistics
from pathlib import Path


def make_aligner(reference: Path):
    """A mappy ``map-ont`` aligner for a FASTA (plain or gzipped)."""
    import mappy

    aligner = mappy.Aligner(str(reference), preset="map-ont")
    if not aligner:
        raise ValueError(f"{reference}: cannot build a mappy index")
    return aligner


def identity(aligner, seq: str) -> float | None:
    """Identity of the primary hit of ``seq``, or None when it does not map."""
    if not seq:
        return None
    for hit in aligner.map(seq):
        if hit.is_primary:
            return 1.0 - hit.NM / max(hit.blen, 1)
    return None


def identities(seqs: dict[str, str], reference, aligner=None) -> dict[str, float | None]:
    """Identity per read id against ``reference`` (a FASTA path) or a ready ``aligner``."""
    al = aligner if aligner is not None else make_aligner(Path(reference))
    return {rid: identity(al, s) for rid, s in seqs.items()}


def summarise(ids: dict[str, float | None], bases: int | None = None) -> dict:
    """Median/mean identity, reads and reads mapped."""
    vals = [v for v in ids.values() if v is not None]
    out = {"reads": len(ids), "mapped": len(vals),
           "median_identity": round(statistics.median(vals), 5) if vals else 0.0,
           "mean_identity": round(statistics.fmean(vals), 5) if vals else 0.0}
    if bases is not None:
        out["bases"] = int(bases)
    return out


def register(sub) -> None:
    """Add the ``evaluate`` subcommand."""
    p = sub.add_parser("evaluate", help="basecall DATA with MODEL and measure mappy identity")
    p.add_argument("model", help="models/<name> folder, card.toml, or a training checkpoint .pt")
    p.add_argument("data", nargs="+", type=Path, help="pod5 files or folders")
    p.add_argument("--reference", type=Path, default=None, help="reference FASTA")
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    p.add_argument("--max-reads", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)


def run(args) -> int:
    """Entry point of ``python -m tools evaluate`` (filled in below)."""
    from tools.evaluate_run import evaluate_cli

    return evaluate_cli(args)
