"""Adapter trimming on real reads: how many have the kit's adapter, bases cut, identity.

Basecalls a shared pod5 (default: the R9.4.1 E. coli reads, SQK-LSK108) with the
bundled default model and ``--no-trim``, then runs :mod:`edgecall.trim` on every
read and maps the read before and after the cut with mappy (``map-ont``) to the
reference. Prints the fraction of reads with an adapter found, bases trimmed,
median aligned identity (clipping makes it blind to the adapter), median
whole-read identity (matches / read length: what a leftover adapter costs) and
the median unaligned bases at the read start.

Usage::

    python bench/trim.py [--reads PATH.pod5 --reference REF.fa.gz] [--kit sqk-lsk108]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECALL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=Path, default=DATA / "r9.4.1" / "ecoli" / "reads.pod5")
    ap.add_argument("--reference", type=Path,
                    default=DATA / "r9.4.1" / "ecoli" / "reference.fa.gz")
    ap.add_argument("--kit", default="", help="sequencing kit (default: the pod5's)")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def _hit(aligner: object, seq: str) -> tuple[float, float, int] | None:
    """(aligned identity, whole-read identity, unaligned bases at the start) or None."""
    for h in aligner.map(seq):  # type: ignore[attr-defined]
        if h.is_primary:
            deletions = max(h.blen - (h.q_en - h.q_st), 0)
            return 1 - h.NM / max(h.blen, 1), h.mlen / (len(seq) + deletions), h.q_st
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import mappy
    import pysam

    sys.path.insert(0, str(ROOT))
    from edgecall import trim
    from edgecall.io.reader import scan_runs

    kit = args.kit or scan_runs([args.reads])[0].sequencing_kit
    with tempfile.TemporaryDirectory() as tmp:
        bam = Path(tmp) / "calls.bam"
        subprocess.run([sys.executable, "-m", "edgecall", "basecall", str(args.reads), "-o",
                        str(bam), "--no-trim", "--no-progress", "--threads",
                        str(args.threads)], check=True, cwd=ROOT)
        with pysam.AlignmentFile(str(bam), check_sq=False) as f:
            seqs = [a.query_sequence or "" for a in f.fetch(until_eof=True)]
    aligner = mappy.Aligner(str(args.reference), preset="map-ont")
    found = bases = 0
    pairs = []
    for seq in seqs:
        hit = trim.find_adapter(seq, trim.adapters_for(kit))
        cut = hit.end if hit is not None and hit.end < len(seq) else 0
        found += cut > 0
        bases += cut
        before, after = _hit(aligner, seq), _hit(aligner, seq[cut:])
        if before and after:
            pairs.append((before, after))
    med = lambda i, j: statistics.median(p[i][j] for p in pairs)  # noqa: E731
    print(f"{args.reads} ({kit}): {len(seqs)} reads, adapter found in {found} "
          f"({found / max(len(seqs), 1):.0%}), {bases} bases trimmed "
          f"({bases / max(found, 1):.1f} per trimmed read); {len(pairs)} mapped")
    print(f"median aligned identity      before {med(0, 0):.4f}  after {med(1, 0):.4f}")
    print(f"median whole-read identity   before {med(0, 1):.4f}  after {med(1, 1):.4f}")
    print(f"median unaligned start bases before {med(0, 2):.0f}  after {med(1, 2):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
