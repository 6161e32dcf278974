"""``edgecall summary``: a basecall output's per-read sequencing summary (dorado's columns)."""

from __future__ import annotations

import argparse
import sys

from edgecall.cli.options import float_at_least

HELP = "print the sequencing summary (sequencing_summary.txt) of SAM/BAM/FASTQ outputs"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``summary`` subcommand."""
    p = sub.add_parser("summary", help=HELP, description=HELP + ", with dorado's columns, "
                       "for QC tools such as pycoQC or NanoPlot: "
                       "edgecall summary calls.bam > sequencing_summary.txt")
    p.add_argument("paths", nargs="+", metavar="CALLS",
                   help="edgecall/dorado SAM or BAM (or FASTQ with tags in the headers)")
    p.add_argument("--min-qscore", type=float_at_least(0),
                   help="passes_filtering = mean qscore >= this (default: the --min-qscore "
                        "on the file's @PG command line, else 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the table to stdout; returns the exit status."""
    from edgecall import summary

    sys.stdout.write("\t".join(summary.COLUMNS) + "\n")
    for path in args.paths:
        rows = summary.summary_rows(path, args.min_qscore)
        summary.write_rows(rows, sys.stdout)
    sys.stdout.flush()
    return 0
