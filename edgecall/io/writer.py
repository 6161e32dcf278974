"""Writer stage: FASTQ (optionally gzipped) or unaligned SAM/BAM with dorado-style tags.

Every file output is written under a temporary name in the destination folder
(``.<name>.<pid>.tmp``) and renamed into place only when the writer is closed
without error, so an interrupted run never leaves a truncated file that looks
finished. Tags per record: ``qs`` mean qscore, ``ns`` samples, ``ts`` trimmed
samples, ``mv`` move table (``[stride, m0, m1, ...]``), ``ch`` channel, ``rn``
read number, ``st`` start sample, ``sr`` sample rate, ``RG`` read group.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgecall import __version__
from edgecall.errors import InputError
from edgecall.types import CalledRead

FORMATS = ("fastq", "sam", "bam")


def format_for(path: Path | None, fmt: str | None = None) -> tuple[str, bool]:
    """(format, gzip) for an output path; stdout is FASTQ."""
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
        return fmt, bool(path and path.name.endswith(".gz"))
    if path is None:
        return "fastq", False
    name = path.name.lower()
    for ext, out in ((".fastq.gz", ("fastq", True)), (".fq.gz", ("fastq", True)),
                     (".fastq", ("fastq", False)), (".fq", ("fastq", False)),
                     (".sam", ("sam", False)), (".bam", ("bam", False))):
        if name.endswith(ext):
            return out
    raise InputError(f"{path}: cannot tell the output format from the extension "
                     "(use .fastq, .fastq.gz, .sam or .bam)")


def temp_path(path: Path) -> Path:
    """The temporary name a file is written under before the final rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def read_group(model_name: str) -> str:
    """Read-group id used in RG tags."""
    return model_name


def fastq_header(r: CalledRead, rg: str) -> str:
    """FASTQ header line: read id then SAM-style tags (tab separated)."""
    tags = [f"qs:f:{r.mean_qscore:.2f}", f"ns:i:{r.num_samples}", f"ts:i:{r.trimmed_samples}",
            f"ch:i:{r.channel}", f"rn:i:{r.read_number}", f"st:i:{r.start_sample}",
            f"sr:i:{r.sample_rate}", f"RG:Z:{rg}"]
    return "@" + r.read_id + "\t" + "\t".join(tags)


class Writer:
    """Writes called reads to one destination; use as a context manager."""

    def __init__(self, path: Path | None, fmt: str, gz: bool, *, model_name: str,
                 sample_rate: int | None = None, command_line: str = "") -> None:
        self.path, self.fmt, self.gz = path, fmt, gz
        self.model_name, self.rg = model_name, read_group(model_name)
        self.sample_rate, self.command_line = sample_rate, command_line
        self.records = 0
        self.tmp: Path | None = temp_path(path) if path is not None else None
        self._fh: IO[str] | None = None
        self._bam: Any = None

    def __enter__(self) -> "Writer":
        if self.fmt == "fastq":
            self._open_fastq()
        else:
            self._open_sam()
        return self

    def _open_fastq(self) -> None:
        """Open the FASTQ stream (stdout, plain temp file, or gzip temp file)."""
        if self.tmp is None:
            self._fh = sys.stdout
        elif self.gz:
            self._fh = io.TextIOWrapper(gzip.open(self.tmp, "wb", compresslevel=6),
                                        encoding="ascii")
        else:
            self._fh = open(self.tmp, "w", encoding="ascii")

    def header(self) -> dict[str, Any]:
        """SAM header: @HD, @RG with the model name, @PG."""
        ds = f"basecall_model={self.model_name}"
        if self.sample_rate:
            ds += f" sample_rate={self.sample_rate}"
        return {"HD": {"VN": "1.6", "SO": "unknown"},
                "RG": [{"ID": self.rg, "DS": ds, "PL": "ONT"}],
                "PG": [{"ID": "basecaller", "PN": "edgecall", "VN": __version__,
                        "CL": self.command_line or "edgecall basecall"}]}

    def _open_sam(self) -> None:
        """Open the SAM/BAM file with pysam."""
        import pysam

        target: Any = self.tmp if self.tmp is not None else "-"
        mode = "wb" if self.fmt == "bam" else "w"
        self._bam = pysam.AlignmentFile(str(target), mode, header=self.header())

    def write(self, r: CalledRead) -> None:
        """Write one called read."""
        if self._fh is not None:
            self._fh.write(f"{fastq_header(r, self.rg)}\n{r.sequence}\n+\n{r.quality}\n")
        else:
            self._bam.write(self._segment(r))
        self.records += 1

    def _segment(self, r: CalledRead) -> Any:
        """An unmapped pysam AlignedSegment with dorado-style tags."""
        import pysam

        seg = pysam.AlignedSegment(self._bam.header)
        seg.query_name = r.read_id
        seg.flag = 4
        seg.reference_id = -1
        seg.reference_start = -1
        seg.mapping_quality = 0
        seg.query_sequence = r.sequence
        seg.query_qualities = pysam.qualitystring_to_array(r.quality)
        mv = np.concatenate(([r.stride], r.moves)).astype(np.int8)
        seg.set_tags([("qs", float(r.mean_qscore), "f"), ("ns", int(r.num_samples), "i"),
                      ("ts", int(r.trimmed_samples), "i"), ("mv", mv.tolist(), "c"),
                      ("ch", int(r.channel), "i"), ("rn", int(r.read_number), "i"),
                      ("st", int(r.start_sample), "i"), ("sr", int(r.sample_rate), "i"),
                      ("RG", self.rg, "Z")])
        return seg

    def close(self, ok: bool = True) -> None:
        """Close; on success rename the temp file into place, else delete it."""
        if self._bam is not None:
            self._bam.close()
            self._bam = None
        if self._fh is not None:
            if self._fh is sys.stdout:
                self._fh.flush()
            else:
                self._fh.close()
            self._fh = None
        if self.tmp is None or self.path is None:
            return
        if ok:
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(ok=exc_type is None)


def open_writer(path: str | os.PathLike[str] | None, fmt: str | None = None, *,
                model_name: str, sample_rate: int | None = None,
                command_line: str = "") -> Writer:
    """A :class:`Writer` for ``path`` (``None`` = FASTQ on stdout).

    The format follows the extension (.fastq, .fq, .fastq.gz, .sam, .bam)
    unless ``fmt`` is given.
    """
    p = Path(path) if path is not None else None
    if p is not None and p.parent and not p.parent.is_dir():
        raise InputError(f"{p}: output folder {p.parent} does not exist")
    kind, gz = format_for(p, fmt)
    return Writer(p, kind, gz, model_name=model_name, sample_rate=sample_rate,
                  command_line=command_line)
