"""Reader stage: stream reads out of pod5 files with the pod5 library.

Files are opened one at a time and reads are yielded one by one, so memory
does not grow with the input. A file that cannot be opened or read becomes a
:class:`~edgecall.types.Failed` record (``read_id == ""``) and the stream goes
on with the next file.
"""

from __future__ import annotations

import datetime
import logging
import os
import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgecall.errors import InputError
from edgecall.types import Failed, Read, RunMeta

log = logging.getLogger(__name__)

POD5_MAGIC = b"\x8bPOD\r\n\x1a\n"


def find_pod5(paths: Sequence[str | os.PathLike[str]], recursive: bool = False) -> list[Path]:
    """Expand files and directories into an ordered list of pod5 files.

    Directories contribute their ``*.pod5`` files (all subfolders too with
    ``recursive``), sorted by path. A missing path raises :class:`InputError`.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            pattern = "**/*.pod5" if recursive else "*.pod5"
            found = sorted(q for q in p.glob(pattern) if q.is_file())
            if not found:
                log.warning("%s: no .pod5 files found%s", p,
                            "" if recursive else " (use --recursive for subfolders)")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


def _first_line(exc: BaseException) -> str:
    """First line of an exception message (pod5/arrow errors are multi-line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sniff(path: Path) -> None:
    """Raise InputError unless ``path`` starts and ends like a pod5 file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if size >= 16:
                fh.seek(size - 8)
                tail = fh.read(8)
            else:
                tail = b""
    except OSError as exc:
        raise InputError(f"{path}: cannot read file: {exc.strerror}") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes), not a pod5 file")
    if head != POD5_MAGIC:
        raise InputError(f"{path}: not a pod5 file (bad signature)")
    if tail != POD5_MAGIC:
        raise InputError(f"{path}: truncated or incomplete pod5 file (no footer signature)")


def sniff_pod5(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` unless ``path`` has the pod5 signature at both ends.

    Uses plain reads only (no memory map), so it is safe on a file another
    process is writing or truncating.
    """
    _sniff(Path(path))


def _run_meta(run_info: object) -> RunMeta:
    """Pull the run-level fields edgecall uses out of a pod5 RunInfo."""
    g = lambda name: str(getattr(run_info, name, "") or "")  # noqa: E731
    return RunMeta(flow_cell_product_code=g("flow_cell_product_code").upper(),
                   sequencing_kit=g("sequencing_kit").lower(),
                   sample_rate=int(getattr(run_info, "sample_rate", 0) or 0),
                   experiment_name=g("experiment_name"), flow_cell_id=g("flow_cell_id"),
                   sample_id=g("sample_id"), protocol_name=g("protocol_name"),
                   run_id=g("acquisition_id"),
                   acquisition_start_time=_iso_utc(getattr(run_info, "acquisition_start_time",
                                                           None)),
                   device_id=g("sequencer_position"), device_type=g("sequencer_position_type"),
                   protocol_run_id=g("protocol_run_id"))


def _iso_utc(when: object) -> str:
    """A pod5 timestamp as ISO 8601 UTC with milliseconds ("" when unknown)."""
    if not isinstance(when, datetime.datetime):
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def scan_runs(files: Iterable[Path]) -> list[RunMeta]:
    """The distinct runs (pod5 run infos) of the input files, in first-seen order.

    Only the small run-info tables are read, so a SAM/BAM header can list one
    read group per run before any read is called. Unreadable files are skipped
    here; the read stream reports them.
    """
    import pod5

    seen: dict[str, RunMeta] = {}
    for path in files:
        try:
            with pod5.Reader(Path(path)) as reader:
                rows = reader.run_info_table.read_all().to_pylist()
        except Exception:  # noqa: BLE001 - reported by iter_file as a Failed record
            continue
        for row in rows:
            meta = _run_meta(types.SimpleNamespace(**row))
            seen.setdefault(meta.run_id, meta)
    return list(seen.values())


def _to_read(rec: object, path: Path, metas: dict[str, RunMeta]) -> Read:
    """Convert a pod5 ReadRecord into an edgecall Read."""
    ri = rec.run_info  # type: ignore[attr-defined]
    key = ri.acquisition_id
    meta = metas.get(key)
    if meta is None:
        meta = metas[key] = _run_meta(ri)
    cal = rec.calibration  # type: ignore[attr-defined]
    pore = rec.pore  # type: ignore[attr-defined]
    return Read(read_id=str(rec.read_id), signal=np.asarray(rec.signal, dtype=np.int16),  # type: ignore[attr-defined]
                offset=float(cal.offset), scale=float(cal.scale),
                sample_rate=int(ri.sample_rate), channel=int(pore.channel), well=int(pore.well),
                read_number=int(rec.read_number), start_sample=int(rec.start_sample),  # type: ignore[attr-defined]
                end_reason=rec.end_reason.name.lower(), run=meta, path=str(path))  # type: ignore[attr-defined]


def iter_file(path: Path, *, read_ids: set[str] | None = None) -> Iterator[Read | Failed]:
    """Yield the reads of one pod5 file; failures become :class:`Failed` records."""
    import pod5

    try:
        _sniff(path)
        reader = pod5.Reader(path)
    except InputError as exc:
        yield Failed(str(path), "", str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - pod5/arrow raise many types
        yield Failed(str(path), "", f"{path}: cannot open pod5 file: {_first_line(exc)}")
        return
    metas: dict[str, RunMeta] = {}
    with reader:
        selection = sorted(read_ids) if read_ids is not None else None
        try:
            records = reader.reads(selection=selection, missing_ok=True)
            for rec in records:
                try:
                    yield _to_read(rec, path, metas)
                except Exception as exc:  # noqa: BLE001
                    rid = str(getattr(rec, "read_id", "?"))
                    yield Failed(str(path), rid,
                                 f"{path}: read {rid}: corrupt signal data: {_first_line(exc)}")
        except Exception as exc:  # noqa: BLE001
            yield Failed(str(path), "", f"{path}: corrupt pod5 file: {_first_line(exc)}")


def iter_reads(files: Iterable[Path], *, read_ids: set[str] | None = None,
               max_reads: int | None = None) -> Iterator[Read | Failed]:
    """Stream reads from several pod5 files in order.

    Parameters
    ----------
    files : iterable of Path
        pod5 files (see :func:`find_pod5`).
    read_ids : set of str, optional
        Only these reads.
    max_reads : int, optional
        Stop after this many reads have been yielded.
    """
    n = 0
    for path in files:
        for item in iter_file(Path(path), read_ids=read_ids):
            if isinstance(item, Read):
                if max_reads is not None and n >= max_reads:
                    return
                n += 1
            yield item


def check_pod5(path: str | os.PathLike[str]) -> int:
    """Check that a pod5 file is complete and readable; return its read count.

    Opens the file, reads its footer and the metadata of every read, and
    decompresses every read's signal. Raises :class:`InputError` with a
    one-line reason otherwise.
    """
    import pod5

    p = Path(path)
    _sniff(p)
    try:
        with pod5.Reader(p) as reader:
            n = 0
            for rec in reader.reads():
                _ = rec.signal
                n += 1
            return n
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{p}: corrupt pod5 file: {_first_line(exc)}") from None
