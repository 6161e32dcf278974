"""``edgecall basecall``: pod5 in, FASTQ/SAM/BAM out."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecall.cli.options import float_at_least, int_at_least


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``basecall`` subcommand."""
    p = sub.add_parser("basecall", help="basecall pod5 files to FASTQ/SAM/BAM",
                       description="Basecall pod5 files. Output format follows the -o "
                       "extension (.fastq, .fastq.gz, .sam, .bam); default FASTQ on stdout.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="pod5 files or folders of them")
    p.add_argument("-o", "--output", help="output file, or - for stdout (default: FASTQ on "
                   "stdout)")
    p.add_argument("--model", help="bundled model name or model folder "
                   "(default: picked by the reads' chemistry)")
    p.add_argument("--engine", default="auto", help="onnx, native, tflite or auto "
                   "(native where it supports the model, else onnx)")
    p.add_argument("--variant", default="main",
                   help="model file: main (the card's own), or fp32, int8, ... "
                        "(edgecall models lists them)")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="engine threads (default: all cores)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32,
                   help="chunks per engine call")
    p.add_argument("--chunk-size", type=int_at_least(1),
                   help="samples per chunk (default: model card)")
    p.add_argument("--overlap", type=int_at_least(0),
                   help="samples of overlap (default: model card)")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy",
                   help="greedy: CTC best path (Viterbi for a CRF model); beam: beam search")
    p.add_argument("--beam-width", type=int_at_least(1), default=5,
                   help="beams of --decoder beam")
    p.add_argument("--min-samples", type=int_at_least(0), default=1000,
                   help="reads with fewer samples are reported and skipped")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    p.add_argument("-n", "--max-reads", type=int_at_least(0), default=0,
                   help="stop after this many reads (0 = all)")
    p.add_argument("-l", "--read-ids", help="file with one read id per line: call only those")
    p.add_argument("--format", choices=("fastq", "sam", "bam"),
                   help="output format (overrides the extension)")
    p.add_argument("--emit-fastq", action="store_true", help="write FASTQ (tags in the header)")
    p.add_argument("--emit-sam", action="store_true", help="write SAM")
    p.add_argument("--emit-moves", action="store_true",
                   help="write the move table (mv:B:c) to SAM/BAM and FASTQ headers")
    p.add_argument("--min-qscore", type=float_at_least(0), default=0.0,
                   help="reads with a lower mean qscore go to the _fail companion file "
                        "(calls.bam -> calls_fail.bam); on stdout they are dropped and counted")
    p.add_argument("--fail-output", help="where reads below --min-qscore go "
                   "(default: the _fail companion of -o)")
    p.add_argument("--resume-from", metavar="CALLS",
                   help="an earlier, interrupted run's SAM/BAM: its reads are copied, not called "
                        "again (may be the -o file itself)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--no-trim", action="store_true",
                   help="keep the sequencing adapter at read starts (default: found with edlib "
                        "and cut off; ts:i says how many samples)")
    p.add_argument("--kit-name", help="sequencing kit whose adapter is trimmed, e.g. "
                   "SQK-LSK114 (default: each read's kit from the pod5 run info)")
    p.add_argument("--emit-summary", action="store_true",
                   help="also write sequencing_summary.txt (dorado's columns) beside -o")
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


def _output_format(args: argparse.Namespace, output: str | None) -> str | None:
    """--format / --emit-fastq / --emit-sam; a clash with the -o extension is an error."""
    from edgecall.errors import InputError
    from edgecall.io.writer import format_for

    chosen = [f for f, on in (("fastq", args.emit_fastq), ("sam", args.emit_sam)) if on]
    if args.format:
        chosen.append(args.format)
    if len(set(chosen)) > 1:
        raise InputError(f"conflicting output formats: {', '.join(sorted(set(chosen)))}")
    if not chosen:
        return None
    if output is not None:
        try:
            by_ext = format_for(Path(output))[0]
        except InputError:
            return chosen[0]
        if by_ext != chosen[0]:
            raise InputError(f"{output}: a .{by_ext} name for {chosen[0].upper()} output "
                             f"(name it .{chosen[0]} or leave out the format option)")
    return chosen[0]


def _report_outputs(args: argparse.Namespace, output: str | None, summary: object) -> None:
    """One stderr line each for resumed reads, adapter trimming and --min-qscore."""
    from edgecall.io.writer import fail_path

    resumed = getattr(summary, "resumed", 0)
    below = getattr(summary, "below_min_qscore", 0)
    if args.resume_from:
        print(f"edgecall: {resumed} reads copied from {args.resume_from}", file=sys.stderr)
    if not args.no_trim:
        print(f"edgecall: adapter trimmed from {getattr(summary, 'adapters_trimmed', 0)} reads "
              f"({getattr(summary, 'adapter_bases', 0):,} bases)", file=sys.stderr)
    if args.min_qscore > 0:
        where = ("dropped (stdout output)" if output is None
                 else f"written to {args.fail_output or fail_path(Path(output))}")
        print(f"edgecall: {below} reads below --min-qscore {args.min_qscore:g} {where}",
              file=sys.stderr)


def _summary_target(args: argparse.Namespace, output: str | None) -> Path | None:
    """Where --emit-summary writes (beside -o); checked before any work is done."""
    from edgecall.errors import InputError
    from edgecall.io.writer import check_overwrite
    from edgecall.summary import FILE_NAME

    if not args.emit_summary:
        return None
    if output is None:
        raise InputError("--emit-summary needs an output file (-o calls.bam); "
                         "for stdout, run edgecall summary on the output afterwards")
    table = Path(output).parent / FILE_NAME
    check_overwrite(table, args.force)
    return table


def _emit_summary(args: argparse.Namespace, output: str | None, table: Path) -> None:
    """Write the sequencing summary of the finished output (and its _fail file)."""
    import os

    from edgecall import summary
    from edgecall.io.reader import find_pod5, scan_runs
    from edgecall.io.writer import fail_path
    from edgecall.summary import parse_time

    assert output is not None
    starts = {r.run_id: w for r in scan_runs(find_pod5(args.paths, recursive=args.recursive))
              if (w := parse_time(r.acquisition_start_time)) is not None}
    parts = [Path(output)]
    if args.min_qscore > 0:
        parts.append(Path(args.fail_output) if args.fail_output else fail_path(Path(output)))
    tmp = table.with_name(f".{table.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\t".join(summary.COLUMNS) + "\n")
        n = sum(summary.write_rows(summary.summary_rows(p, args.min_qscore, starts), fh)
                for p in parts if p.is_file())
    os.replace(tmp, table)
    print(f"edgecall: {n} reads in {table}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from edgecall.types import Failed

    shown = [0]

    def report(f: Failed) -> None:
        if f.kind == "short":  # skipped and counted in the summary, not an error
            return
        if shown[0] < 20:
            print(f"edgecall: {f.reason}", file=sys.stderr)
        elif shown[0] == 20:
            print("edgecall: (further failures are counted in the summary)", file=sys.stderr)
        shown[0] += 1

    output = None if args.output in (None, "-") else args.output
    table = _summary_target(args, output)
    with _sigterm_interrupts():
        summary = _call(args, output, report)
    errors = summary.errors
    bad_files = len(summary.bad_files)
    bad_reads = len(errors) - bad_files
    print(f"edgecall: {summary.reads} reads, {summary.bases:,} bases, "
          f"{summary.samples_per_s:,.0f} samples/s, {summary.wall_s:.1f} s, "
          f"peak RSS {summary.peak_rss_mb:.0f} MB, model {summary.model or '-'} "
          f"({summary.engine or '-'})"
          + (f"; {bad_files} bad files, {bad_reads} failed reads" if errors else "")
          + (f"; {summary.short_reads} short reads skipped" if summary.short_reads else ""),
          file=sys.stderr)
    if summary.discarded and output is not None:
        print(f"edgecall: {output} not written: the input has errors (--skip-bad writes the "
              "readable reads)", file=sys.stderr)
    _report_outputs(args, output, summary)
    if table is not None and not getattr(summary, "discarded", False):
        _emit_summary(args, output, table)
    if errors and not args.skip_bad:
        return 2
    return 0


def _call(args: argparse.Namespace, output: str | None, report: Any) -> Any:
    """edgecall.pipeline.basecall with the command line's options."""
    from edgecall.pipeline import basecall

    return basecall(
        args.paths, output, model=args.model, engine=args.engine,
        threads=args.threads or 0, batch_size=args.batch_size, chunk_size=args.chunk_size,
        overlap=args.overlap, recursive=args.recursive, max_reads=args.max_reads or None,
        read_ids=_read_ids(args.read_ids), decoder=args.decoder, beam_width=args.beam_width,
        fmt=_output_format(args, output), progress=sys.stderr.isatty() and not args.no_progress,
        variant=args.variant, command_line=shlex.join(["edgecall", *sys.argv[1:]]),
        on_failure=report, min_samples=args.min_samples, emit_moves=args.emit_moves,
        min_qscore=args.min_qscore, fail_output=args.fail_output, force=args.force,
        resume_from=args.resume_from, skip_bad=args.skip_bad, trim_adapters=not args.no_trim,
        kit_name=args.kit_name or "", vet=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (exit 130) so the temporary output is deleted."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
