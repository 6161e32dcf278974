"""``--resume-from``: carry the reads of an earlier, interrupted run into a new output.

dorado's semantics: the read ids already in the earlier SAM/BAM are skipped
when calling, and its records are copied (tags and all) into the new output,
so the new file holds every read exactly once. A truncated file (``kill -9``,
power loss) is read up to its last complete record.

edgecall writes under a temporary name (``.calls.bam.<pid>.tmp``) until a run
finishes, so after a crash ``calls.bam`` may not exist yet: naming it finds the
newest such temporary file, which is removed once the new output is complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecall.errors import InputError

log = logging.getLogger(__name__)


def find_partial(path: Path) -> Path | None:
    """The newest temporary file an interrupted run left for ``path``, if any."""
    found = sorted(path.parent.glob(f".{path.name}.*.tmp"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve(path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """(file to resume from, whether it is an interrupted run's temporary file)."""
    p = Path(path)
    if p.is_file():
        return p, False
    partial = find_partial(p)
    if partial is not None:
        # moved to a name no clean-up of dead runs' temporaries touches (those end .<pid>.tmp)
        kept = p.with_name(f".{p.name}.resume.tmp")
        if partial != kept:
            os.replace(partial, kept)
        log.info("resuming from %s (the interrupted run's temporary file, kept as %s)",
                 partial, kept)
        return kept, True
    raise InputError(f"{p}: no such file to resume from (nor a partial .{p.name}.*.tmp)")


def _open(path: Path) -> Any:
    """Open a SAM/BAM with pysam, tolerating a missing EOF block."""
    import pysam

    try:
        with warnings.catch_warnings():  # a missing EOF block is what resuming is for
            warnings.simplefilter("ignore", UserWarning)
            return pysam.AlignmentFile(str(path), check_sq=False, ignore_truncation=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot resume from it (not a readable SAM/BAM): "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                         ) from None


def complete_records(path: Path) -> Iterator[Any]:
    """The records of a SAM/BAM up to its last complete one."""
    text_tail_ok = True
    if not _is_bgzf(path):
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 1))
            text_tail_ok = fh.read(1) in (b"\n", b"")
    f = _open(path)
    try:
        prev, broke = None, [False]
        for seg in _until_error(f.fetch(until_eof=True), path, broke):
            if prev is not None:
                yield prev
            prev = seg
        # a record read before the one htslib choked on is whole; the file's last one
        # is whole only if a SAM file ends with its newline (BAM: htslib checks)
        if prev is not None and (broke[0] or (text_tail_ok and _complete(prev))):
            yield prev
    finally:
        with contextlib.suppress(OSError):  # htslib reports the truncation again on close
            f.close()


def _until_error(records: Iterator[Any], path: Path, broke: list[bool]) -> Iterator[Any]:
    """Records until the first one htslib cannot read (the truncation point; sets broke[0])."""
    while True:
        try:
            seg = next(records)
        except StopIteration:
            return
        except (OSError, ValueError) as exc:
            text = str(exc).strip()
            log.warning("%s: truncated; resuming from its complete records (%s)", path,
                        text.splitlines()[0] if text else type(exc).__name__)
            broke[0] = True
            return
        yield seg


def _is_bgzf(path: Path) -> bool:
    """True for a BGZF (BAM) file."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _complete(seg: Any) -> bool:
    """A record whose sequence and qualities agree (a cut SAM line would not)."""
    seq = seg.query_sequence or ""
    qual = seg.query_qualities
    return qual is None or len(qual) == len(seq)


@dataclass
class Resume:
    """What an earlier run already wrote."""

    path: Path
    partial: bool = False  # an interrupted run's temporary file (removed when done)
    read_ids: set[str] = field(default_factory=set)
    read_groups: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def scan(cls, path: str | os.PathLike[str]) -> Resume:
        """Read the ids and read groups of an earlier output."""
        src, partial = resolve(path)
        with _open(src) as f:
            groups = [dict(rg) for rg in f.header.to_dict().get("RG", [])]
        ids = {seg.query_name for seg in complete_records(src)}
        return cls(src, partial, ids, groups)

    def copy_into(self, writer: Any) -> int:
        """Copy the complete records into ``writer`` (a :class:`~edgecall.io.writer.Writer`)."""
        n = 0
        seen: set[str] = set()
        for seg in complete_records(self.path):
            if seg.query_name in seen:
                continue
            seen.add(seg.query_name)
            writer.copy(seg)
            n += 1
        return n

    def finish(self) -> None:
        """Remove the interrupted run's temporary file once the new output is complete."""
        if self.partial:
            self.path.unlink(missing_ok=True)
