"""Writer stage: FASTQ (optionally gzipped) or unaligned SAM/BAM with dorado's tags.

Every file output is written under a temporary name in the destination folder
(``.<name>.<pid>.tmp``) and renamed into place only when the writer is closed
without error, so an interrupted run never leaves a truncated file that looks
finished. ``path=None`` writes to stdout.

Records follow dorado's SAM specification (documentation/SAM.md): per read
``RG:Z`` (``<run id>_<model>``), ``qs:f`` mean qscore, ``du:f`` duration (s),
``ns:i`` samples, ``ts:i`` samples trimmed from the start, ``mx:i`` mux (well),
``ch:i`` channel, ``st:Z`` start time (UTC, ISO 8601), ``rn:i`` read number,
``fn:Z`` pod5 file name, ``sm:f``/``sd:f`` the pA shift/scale of the signal
standardisation and ``sv:Z`` its method, and ``mv:B:c`` the move table
(``[stride, m0, m1, ...]``) when moves are asked for. The header has one ``@RG``
per run (``ID``, ``PU`` flow cell, ``PM`` device, ``DT`` acquisition start,
``PL``, ``DS`` runid/basecall_model, ``LB``/``SM`` sample) and ``@PG`` with the
command line. FASTQ headers carry the same tags, tab separated, as dorado's
``--emit-fastq`` and ``samtools fastq -T '*'`` do.

With ``min_qscore``, reads whose ``qs`` is below it go to a ``_fail`` companion
file (``calls.bam`` -> ``calls_fail.bam``); on stdout they are dropped and counted.
"""

from __future__ import annotations

import datetime
import functools
import gzip
import io
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgecall import __version__
from edgecall.errors import InputError
from edgecall.types import CalledRead, RunMeta

log = logging.getLogger(__name__)

FORMATS = ("fastq", "sam", "bam")
SCALING_VERSION = {"median_mad": "med_mad", "fixed": "pa"}  # card method -> dorado's sv:Z
Tag = tuple[str, Any, str]


def format_for(path: Path | None, fmt: str | None = None) -> tuple[str, bool]:
    """(format, gzip) for an output path; stdout is FASTQ unless ``fmt`` says otherwise."""
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


def fail_path(path: Path) -> Path:
    """The ``_fail`` companion of an output: ``calls.fastq.gz`` -> ``calls_fail.fastq.gz``."""
    name = path.name
    for ext in (".fastq.gz", ".fq.gz", ".fastq", ".fq", ".sam", ".bam"):
        if name.lower().endswith(ext):
            return path.with_name(name[:-len(ext)] + "_fail" + name[-len(ext):])
    return path.with_name(name + "_fail")


# -- read groups and tags -------------------------------------------------------------------
def read_group_id(run_id: str, model_name: str) -> str:
    """dorado's read-group id ``<run id>_<model>`` (just the model when the run is unknown)."""
    return f"{run_id}_{model_name}" if run_id else model_name


def read_group(run: RunMeta, model_name: str) -> dict[str, str]:
    """One ``@RG`` header line for a run, with dorado's fields; empty fields are left out."""
    ds = f"basecall_model={model_name}"
    if run.run_id:
        ds = f"runid={run.run_id} {ds}"
    rg = {"ID": read_group_id(run.run_id, model_name), "PU": run.flow_cell_id,
          "PM": run.device_id, "DT": run.acquisition_start_time, "PL": "ONT", "DS": ds,
          "LB": run.sample_id, "SM": run.sample_id}
    return {k: v for k, v in rg.items() if v}


@functools.lru_cache(maxsize=64)
def _run_start(iso: str) -> datetime.datetime:
    """A run's acquisition start (the Unix epoch when unknown)."""
    if not iso:
        return datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    when = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def start_time(r: CalledRead) -> str:
    """``st:Z``: acquisition start + start_sample / sample_rate, UTC ISO 8601 (ms)."""
    offset = r.start_sample / r.sample_rate if r.sample_rate else 0.0
    when = _run_start(r.run.acquisition_start_time) + datetime.timedelta(seconds=offset)
    return when.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def read_tags(r: CalledRead, rg: str, *, emit_moves: bool = False) -> list[Tag]:
    """The (tag, value, SAM type) list of one read, in dorado's order."""
    duration = r.num_samples / r.sample_rate if r.sample_rate else 0.0
    tags: list[Tag] = [
        ("qs", float(r.mean_qscore), "f"), ("du", float(duration), "f"),
        ("ns", int(r.num_samples), "i"), ("ts", int(r.trimmed_samples), "i"),
        ("mx", int(r.well), "i"), ("ch", int(r.channel), "i"), ("st", start_time(r), "Z"),
        ("rn", int(r.read_number), "i"), ("fn", Path(r.path).name if r.path else "", "Z"),
        ("sm", float(r.norm_shift), "f"), ("sd", float(r.norm_scale), "f"),
        ("sv", SCALING_VERSION.get(r.norm_method, r.norm_method), "Z")]
    tags = [t for t in tags if t[2] != "Z" or t[1]]  # no empty strings (SAM forbids them)
    if emit_moves:
        mv = np.concatenate(([r.stride], r.moves)).astype(np.int8)
        tags.append(("mv", mv.tolist(), "c"))
    tags.append(("RG", rg, "Z"))
    return tags


def format_tag(tag: str, value: Any, kind: str) -> str:
    """One tag as SAM text (``qs:f:9.25``, ``mv:B:c,5,1,0``)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = (f"{float(v):g}" if kind == "f" else str(int(v)) for v in value)
        return f"{tag}:B:{kind}," + ",".join(items)
    if kind == "f":
        return f"{tag}:f:{float(value):g}"
    if kind in "cCsSiI":
        return f"{tag}:i:{int(value)}"
    return f"{tag}:{kind}:{value}"


def fastq_header(name: str, tags: Iterable[Tag]) -> str:
    """FASTQ header line: read id then SAM-style tags (tab separated, dorado style)."""
    return "@" + name + "".join("\t" + format_tag(*t) for t in tags)


class Writer:
    """Writes called reads to one destination; use as a context manager.

    Parameters
    ----------
    path : Path or None
        Output file (``None`` = stdout).
    fmt : {"fastq", "sam", "bam"}
    gz : bool
        gzip a FASTQ file.
    model_name : str
        Basecall model (read groups, ``DS``).
    runs : sequence of RunMeta
        The runs in the input: one ``@RG`` each. Reads of other runs get the
        model-only read group.
    emit_moves : bool
        Write ``mv:B:c``.
    min_qscore : float
        Reads with ``qs`` below this go to :attr:`fail` (a ``_fail`` companion
        file), or are dropped and counted on stdout.
    extra_read_groups : sequence of dict
        More ``@RG`` lines (e.g. from a BAM being resumed).
    """

    def __init__(self, path: Path | None, fmt: str, gz: bool, *, model_name: str,
                 sample_rate: int | None = None, command_line: str = "",
                 runs: Sequence[RunMeta] = (), emit_moves: bool = True,
                 min_qscore: float = 0.0, fail_output: Path | None = None,
                 extra_read_groups: Sequence[dict[str, str]] = ()) -> None:
        self.path, self.fmt, self.gz = path, fmt, gz
        self.model_name, self.sample_rate, self.command_line = model_name, sample_rate, command_line
        self.emit_moves, self.min_qscore = emit_moves, float(min_qscore)
        self.read_groups = self._read_groups(runs, extra_read_groups)
        self._rg_ids = {rg["ID"] for rg in self.read_groups}
        self._runs_known = bool(runs) or bool(extra_read_groups)
        self.records = 0
        self.dropped = 0  # below min_qscore with nowhere to put them (stdout)
        self.tmp: Path | None = temp_path(path) if path is not None else None
        self._fh: IO[str] | None = None
        self._bam: Any = None
        self.fail: Writer | None = None
        if self.min_qscore > 0 and path is not None:
            self.fail = Writer(fail_output or fail_path(path), fmt, gz, model_name=model_name,
                               sample_rate=sample_rate, command_line=command_line, runs=runs,
                               emit_moves=emit_moves, extra_read_groups=extra_read_groups)

    def _read_groups(self, runs: Sequence[RunMeta],
                     extra: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """One @RG per run (and model), then extra ones; the model-only group when no runs."""
        groups: dict[str, dict[str, str]] = {}
        for rg in [read_group(run, self.model_name) for run in runs] + list(extra):
            groups.setdefault(rg["ID"], rg)
        if not groups:
            rg = read_group(RunMeta(), self.model_name)
            groups[rg["ID"]] = rg
        return list(groups.values())

    def rg_for(self, r: CalledRead) -> str:
        """The read group of a read: its run and the model.

        A SAM/BAM opened without its runs has only the model's read group; its
        reads point there (their header cannot list a run found later).
        """
        rg = read_group_id(r.run.run_id, self.model_name)
        if rg in self._rg_ids or self.fmt == "fastq":
            return rg
        if not self._runs_known:
            return read_group_id("", self.model_name)
        log.warning("read %s: run %s is not in the output's @RG header lines",
                    r.read_id, r.run.run_id)
        self._rg_ids.add(rg)
        return rg

    def __enter__(self) -> Writer:
        if self.fail is not None:
            self.fail.__enter__()
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
        """SAM header: @HD, one @RG per run and model, @PG with the command line."""
        return {"HD": {"VN": "1.6", "SO": "unknown"}, "RG": self.read_groups,
                "PG": [{"ID": "basecaller", "PN": "edgecall", "VN": __version__,
                        "CL": self.command_line or "edgecall basecall"}]}

    def _open_sam(self) -> None:
        """Open the SAM/BAM file with pysam."""
        import pysam

        target: Any = self.tmp if self.tmp is not None else "-"
        mode = "wb" if self.fmt == "bam" else "w"
        self._bam = pysam.AlignmentFile(str(target), mode, header=self.header())

    def write(self, r: CalledRead) -> bool:
        """Write one called read; False when it failed ``min_qscore``."""
        if r.mean_qscore < self.min_qscore:
            if self.fail is not None:
                self.fail.write(r)
            else:
                self.dropped += 1
            return False
        tags = read_tags(r, self.rg_for(r), emit_moves=self.emit_moves)
        self._write(r.read_id, r.sequence, r.quality, tags)
        return True

    def _write(self, name: str, seq: str, qual: str, tags: list[Tag]) -> None:
        """Write one record (FASTQ or SAM/BAM)."""
        if self._fh is not None:
            self._fh.write(f"{fastq_header(name, tags)}\n{seq}\n+\n{qual}\n")
        else:
            self._bam.write(self._segment(name, seq, qual, tags))
        self.records += 1

    def copy(self, seg: Any) -> None:
        """Write a record read back from an earlier SAM/BAM (``--resume-from``), tags kept."""
        import pysam

        tags = [_plain_tag(t, v, k) for t, v, k in seg.get_tags(with_value_type=True)]
        qual = pysam.qualities_to_qualitystring(seg.query_qualities or [])
        self._write(seg.query_name, seg.query_sequence or "", qual, tags)

    def _segment(self, name: str, seq: str, qual: str, tags: list[Tag]) -> Any:
        """An unmapped pysam AlignedSegment."""
        import pysam

        seg = pysam.AlignedSegment(self._bam.header)
        seg.query_name = name
        seg.flag = 4
        seg.reference_id = -1
        seg.reference_start = -1
        seg.mapping_quality = 0
        seg.query_sequence = seq
        seg.query_qualities = pysam.qualitystring_to_array(qual)
        seg.set_tags(tags)
        return seg

    def close(self, ok: bool = True) -> None:
        """Close; on success rename the temp file into place, else delete it."""
        try:
            if self.fail is not None:
                self.fail.close(ok)
            if self._bam is not None:
                bam, self._bam = self._bam, None
                bam.close()
            if self._fh is not None:
                fh, self._fh = self._fh, None
                if fh is sys.stdout:
                    fh.flush()
                else:
                    fh.close()
            if ok and self.tmp is not None and self.path is not None:
                with open(self.tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(self.tmp, self.path)
        except BaseException:
            ok = False  # e.g. the disk filled up while flushing: never leave the temp behind
            raise
        finally:
            if not ok and self.tmp is not None:
                self.tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(ok=exc_type is None)


_ARRAY_KINDS = {"b": "c", "B": "C", "h": "s", "H": "S", "i": "i", "I": "I", "l": "i",
                "f": "f"}


def _plain_tag(tag: str, value: Any, kind: str) -> Tag:
    """A tag read back by pysam as (tag, value, kind) that set_tags and SAM text accept."""
    if kind == "B":
        return tag, list(value), _ARRAY_KINDS.get(getattr(value, "typecode", "i"), "i")
    return tag, value, kind


def check_overwrite(path: Path, force: bool, *, also: Sequence[Path] = ()) -> None:
    """Refuse to replace an existing output unless ``force`` (dorado users expect this)."""
    if force:
        return
    for p in (path, *also):
        if p.exists():
            raise InputError(f"{p}: output exists; use --force to overwrite it")


def open_writer(path: str | os.PathLike[str] | None, fmt: str | None = None, *,
                model_name: str, sample_rate: int | None = None, command_line: str = "",
                runs: Sequence[RunMeta] = (), emit_moves: bool = True,
                min_qscore: float = 0.0, fail_output: str | os.PathLike[str] | None = None,
                overwrite: bool = True,
                extra_read_groups: Sequence[dict[str, str]] = ()) -> Writer:
    """A :class:`Writer` for ``path`` (``None`` or ``"-"`` = stdout).

    The format follows the extension (.fastq, .fq, .fastq.gz, .sam, .bam)
    unless ``fmt`` is given. With ``overwrite=False`` an existing output (or
    its ``_fail`` companion) is an :class:`InputError`.
    """
    p = Path(path) if path is not None and str(path) != "-" else None
    if p is not None and p.parent and not p.parent.is_dir():
        raise InputError(f"{p}: output folder {p.parent} does not exist")
    kind, gz = format_for(p, fmt)
    fail = Path(fail_output) if fail_output else None
    if p is not None:
        companions = [fail or fail_path(p)] if min_qscore > 0 else []
        check_overwrite(p, overwrite, also=companions)
    return Writer(p, kind, gz, model_name=model_name, sample_rate=sample_rate,
                  command_line=command_line, runs=runs, emit_moves=emit_moves,
                  min_qscore=min_qscore, fail_output=fail, extra_read_groups=extra_read_groups)


def remove_dead_temps(path: Path) -> list[Path]:
    """Delete temporary files for ``path`` left by runs that are no longer alive.

    A run killed with SIGKILL (or by a power cut) cannot delete its
    ``.<name>.<pid>.tmp``; the next run writing the same output removes those
    whose process is gone. Returns what was removed.
    """
    removed: list[Path] = []
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):-len(".tmp")] if name.startswith(prefix) else ""
        if not (name.endswith(".tmp") and pid.isdigit()) or _alive(int(pid)):
            continue
        stale = path.with_name(name)
        stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def _alive(pid: int) -> bool:
    """True if process ``pid`` exists (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
