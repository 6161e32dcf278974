"""``edgecall basecall``: pod5 in, FASTQ/SAM/BAM out."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``basecall`` subcommand."""
    p = sub.add_parser("basecall", help="basecall pod5 files to FASTQ/SAM/BAM",
                       description="Basecall pod5 files. Output format follows the -o "
                       "extension (.fastq, .fastq.gz, .sam, .bam); default FASTQ on stdout.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="pod5 files or folders of them")
    p.add_argument("-o", "--output", help="output file (default: FASTQ on stdout)")
    p.add_argument("--model", help="bundled model name or model folder "
                   "(default: picked by the reads' chemistry)")
    p.add_argument("--engine", default="auto", help="onnx, native, tflite or auto "
                   "(native where it supports the model, else onnx)")
    p.add_argument("--variant", default="main",
                   help="model file: main (the card's own), or fp32, int8, ... "
                        "(edgecall models lists them)")
    p.add_argument("--threads", type=int, default=0, help="engine threads (0 = all cores)")
    p.add_argument("--batch-size", type=int, default=32, help="chunks per engine call")
    p.add_argument("--chunk-size", type=int, help="samples per chunk (default: model card)")
    p.add_argument("--overlap", type=int, help="samples of overlap (default: model card)")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--beam-width", type=int, default=5)
    p.add_argument("--min-samples", type=int, default=1000,
                   help="reads with fewer samples are reported and skipped")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    p.add_argument("--max-reads", type=int, help="stop after this many reads")
    p.add_argument("--read-ids", help="file with one read id per line: call only those")
    p.add_argument("--format", choices=("fastq", "sam", "bam"),
                   help="output format (overrides the extension)")
    p.add_argument("--skip-bad", action="store_true",
                   help="exit 0 even if some files or reads could not be called")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _read_ids(path: str | None) -> set[str] | None:
    """Read ids from a file (one per line, # comments allowed)."""
    if not path:
        return None
    from edgecall.errors import InputError

    try:
        lines = Path(path).read_text().split()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the read-id list: {exc.strerror}") from None
    ids = {t for t in lines if not t.startswith("#")}
    if not ids:
        raise InputError(f"{path}: the read-id list is empty")
    return ids


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from edgecall.pipeline import basecall
    from edgecall.types import Failed

    shown = [0]

    def report(f: Failed) -> None:
        if shown[0] < 20:
            print(f"edgecall: {f.reason}", file=sys.stderr)
        elif shown[0] == 20:
            print("edgecall: (further failures are counted in the summary)", file=sys.stderr)
        shown[0] += 1

    summary = basecall(
        args.paths, args.output, model=args.model, engine=args.engine,
        threads=args.threads, batch_size=args.batch_size, chunk_size=args.chunk_size,
        overlap=args.overlap, recursive=args.recursive, max_reads=args.max_reads,
        read_ids=_read_ids(args.read_ids), decoder=args.decoder, beam_width=args.beam_width,
        fmt=args.format, progress=sys.stderr.isatty() and not args.no_progress,
        variant=args.variant, command_line=shlex.join(["edgecall", *sys.argv[1:]]),
        on_failure=report, min_samples=args.min_samples)
    bad_files = len(summary.bad_files)
    bad_reads = len(summary.failed) - bad_files
    print(f"edgecall: {summary.reads} reads, {summary.bases:,} bases, "
          f"{summary.samples_per_s:,.0f} samples/s, {summary.wall_s:.1f} s, "
          f"peak RSS {summary.peak_rss_mb:.0f} MB, model {summary.model} ({summary.engine})"
          + (f"; {bad_files} bad files, {bad_reads} failed reads" if summary.failed else ""),
          file=sys.stderr)
    if summary.failed and not args.skip_bad:
        return 2
    return 0
