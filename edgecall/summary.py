"""Sequencing summaries: the per-read table dorado's ``summary`` writes (sequencing_summary.txt).

QC tools (pycoQC, NanoPlot, MinIONQC, ...) read this tab-separated table. The
columns and their meanings follow dorado's ``summary`` command. Rows come from a
basecall output: an edgecall (or dorado) SAM/BAM, from its tags and ``@RG``
lines, or a FASTQ whose headers carry the tags (``--emit-fastq``). ``edgecall
summary calls.bam`` prints the table; ``edgecall basecall --emit-summary`` writes
it beside the finished output.

Times are seconds since the run's acquisition start (the ``@RG`` ``DT``):
``start_time`` = ``st`` - ``DT``, ``template_start`` = ``start_time`` + ``ts`` /
sample rate, ``duration`` = ``du``, ``template_duration`` = ``du`` x (``ns`` -
``ts``) / ``ns``. ``minknow_events`` and ``num_events_template`` are samples
(``ns`` and ``ns - ts``), ``median_template``/``mad_template`` and the
``scaling_*`` columns the pA shift/scale of the standardisation (``sm``/``sd``).
"""

from __future__ import annotations

import datetime
import logging
import os
import shlex
from collections.abc import Iterable, Iterator
from typing import IO, Any

from edgecall.errors import InputError

log = logging.getLogger(__name__)

COLUMNS = ("filename", "read_id", "run_id", "channel", "mux", "minknow_events", "start_time",
           "duration", "passes_filtering", "template_start", "num_events_template",
           "template_duration", "sequence_length_template", "mean_qscore_template",
           "strand_score_template", "median_template", "mad_template",
           "scaling_median_template", "scaling_mad_template")
FILE_NAME = "sequencing_summary.txt"
Row = dict[str, Any]


def _row(*, filename: str, read_id: str, run_id: str, channel: int, mux: int, start_s: float,
         duration: float, passed: bool, ns: int, ts: int, length: int, qs: float,
         shift: float, scale: float) -> Row:
    """One summary row from the values every source has."""
    sample_rate = ns / duration if duration > 0 else 0.0
    lead = ts / sample_rate if sample_rate else 0.0
    return {"filename": filename, "read_id": read_id, "run_id": run_id, "channel": channel,
            "mux": mux, "minknow_events": ns, "start_time": start_s, "duration": duration,
            "passes_filtering": "TRUE" if passed else "FALSE", "template_start": start_s + lead,
            "num_events_template": ns - ts, "template_duration": duration - lead,
            "sequence_length_template": length, "mean_qscore_template": qs,
            "strand_score_template": 0.0, "median_template": shift, "mad_template": scale,
            "scaling_median_template": shift, "scaling_mad_template": scale}


def parse_time(text: str) -> datetime.datetime | None:
    """An ISO 8601 time (UTC when no offset), or None."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _ds(rg: dict[str, str]) -> dict[str, str]:
    """``key=value`` pairs of an @RG DS field."""
    return dict(kv.split("=", 1) for kv in rg.get("DS", "").split() if "=" in kv)


def min_qscore_of(header: dict[str, Any]) -> float:
    """The ``--min-qscore`` on the file's ``@PG`` command line (0 when none)."""
    for pg in header.get("PG", []):
        words = shlex.split(pg.get("CL", ""))
        for i, w in enumerate(words):
            if w.startswith("--min-qscore="):
                return float(w.split("=", 1)[1])
            if w == "--min-qscore" and i + 1 < len(words):
                return float(words[i + 1])
    return 0.0


def rows_from_sam(path: str | os.PathLike[str], min_qscore: float | None = None
                  ) -> Iterator[Row]:
    """Summary rows of an edgecall (or dorado) SAM/BAM, from its tags and @RG lines.

    ``passes_filtering`` is ``qs >= min_qscore``; by default the ``--min-qscore``
    of the file's ``@PG`` command line.
    """
    import pysam

    try:
        f = pysam.AlignmentFile(str(path), check_sq=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable SAM/BAM file ({exc})") from None
    with f:
        header = f.header.to_dict()
        cut = min_qscore_of(header) if min_qscore is None else min_qscore
        groups = {rg["ID"]: (_ds(rg).get("runid", ""), parse_time(rg.get("DT", "")))
                  for rg in header.get("RG", [])}
        for seg in f.fetch(until_eof=True):
            if seg.is_secondary or seg.is_supplementary:
                continue
            yield _sam_row(seg, groups, cut)


def _sam_row(seg: Any, groups: dict[str, tuple[str, datetime.datetime | None]],
             cut: float) -> Row:
    """One row from a SAM record's tags."""
    def tag(name: str, default: Any = 0) -> Any:
        return seg.get_tag(name) if seg.has_tag(name) else default

    run_id, begun = groups.get(tag("RG", ""), ("", None))
    start = parse_time(tag("st", ""))
    start_s = (start - begun).total_seconds() if start and begun else 0.0
    qs = float(tag("qs", 0.0))
    return _row(filename=tag("fn", ""), read_id=seg.query_name, run_id=run_id,
                channel=int(tag("ch")), mux=int(tag("mx")), start_s=start_s,
                duration=float(tag("du", 0.0)), passed=qs >= cut, ns=int(tag("ns")),
                ts=int(tag("ts")), length=seg.query_length, qs=qs,
                shift=float(tag("sm", 0.0)), scale=float(tag("sd", 0.0)))


def _fastq_tags(comment: str) -> dict[str, str]:
    """``tag -> value`` of a dorado-style FASTQ header comment."""
    out = {}
    for field in comment.split("\t"):
        parts = field.split(":", 2)
        if len(parts) == 3:
            out[parts[0]] = parts[2]
    return out


def rows_from_fastq(path: str | os.PathLike[str], min_qscore: float = 0.0,
                    run_starts: dict[str, datetime.datetime] | None = None) -> Iterator[Row]:
    """Summary rows of a FASTQ with dorado tags in its headers (``--emit-fastq``).

    A FASTQ has no ``@RG`` lines, so each run's acquisition start comes from
    ``run_starts`` (run id -> time, e.g. from the pod5 inputs); without it,
    times count from the run's earliest read in the file.
    """
    import pysam

    starts = dict(run_starts or {})
    if not run_starts:
        for rec in pysam.FastxFile(str(path)):
            t = _fastq_tags(rec.comment or "")
            when = parse_time(t.get("st", ""))
            run = _run_of(t.get("RG", ""), starts)
            if when and (run not in starts or when < starts[run]):
                starts[run] = when
    for rec in pysam.FastxFile(str(path)):
        t = _fastq_tags(rec.comment or "")
        run = _run_of(t.get("RG", ""), starts)
        start, begun = parse_time(t.get("st", "")), starts.get(run)
        qs = float(t.get("qs", 0.0))
        yield _row(filename=t.get("fn", ""), read_id=rec.name, run_id=run,
                   channel=int(t.get("ch", 0)), mux=int(t.get("mx", 0)),
                   start_s=(start - begun).total_seconds() if start and begun else 0.0,
                   duration=float(t.get("du", 0.0)), passed=qs >= min_qscore,
                   ns=int(t.get("ns", 0)), ts=int(t.get("ts", 0)),
                   length=len(rec.sequence or ""), qs=qs, shift=float(t.get("sm", 0.0)),
                   scale=float(t.get("sd", 0.0)))


def _run_of(rg: str, known: dict[str, Any]) -> str:
    """The run id of a read group ``<run id>_<model>`` (a known run id, else up to the '_')."""
    for run in known:
        if rg.startswith(run + "_"):
            return run
    return rg.split("_", 1)[0] if "_" in rg else ""


def summary_rows(path: str | os.PathLike[str], min_qscore: float | None = None,
                 run_starts: dict[str, datetime.datetime] | None = None) -> Iterator[Row]:
    """Rows of one basecall output (SAM/BAM, or FASTQ with dorado header tags)."""
    name = str(path).lower()
    if name.endswith((".fastq", ".fq", ".fastq.gz", ".fq.gz")):
        return rows_from_fastq(path, min_qscore or 0.0, run_starts)
    return rows_from_sam(path, min_qscore)


def _cell(value: Any) -> str:
    """A table cell: floats with dorado-like precision."""
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def write_table(rows: Iterable[Row], fh: IO[str]) -> int:
    """Write the header and rows (tab separated); returns the number of rows."""
    fh.write("\t".join(COLUMNS) + "\n")
    return write_rows(rows, fh)


def write_rows(rows: Iterable[Row], fh: IO[str]) -> int:
    """Write rows without the header; returns how many."""
    n = 0
    for row in rows:
        fh.write("\t".join(_cell(row[c]) for c in COLUMNS) + "\n")
        n += 1
    return n
