"""Polling scanner for pod5 files appearing under a MinKNOW output folder.

MinKNOW writes ``pod5/``, ``pod5_pass/``, ``pod5_fail/`` (or ``pod5_skip/``)
inside nested ``<experiment>/<sample>/<run>/`` folders. Polling with ``os.scandir``
works the same on SD cards, USB disks and network mounts, where inotify may not.

A file is *ready* when

1. its size and mtime have not changed for ``settle`` seconds, and
2. it starts and ends with the pod5 signature, i.e. its footer has been written
   (:func:`edgecall.io.reader.sniff_pod5`: plain reads, never a memory map, so a
   file truncated meanwhile cannot crash the daemon with SIGBUS; the reads
   themselves are checked when the file is basecalled, from a private copy).

A file that is stable but unreadable is retried on every poll; if it is still
unreadable ``settle`` seconds later (with its size unchanged all along) it is
reported *corrupt*, with the reader's one-line reason. Hidden files and folders
(``.name``) and the excluded folders (the daemon's own output/state) are skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgecall.errors import InputError

log = logging.getLogger(__name__)

#: ``known`` value meaning "in the journal; never look at this file again".
SETTLED = None

Signature = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A complete, readable input file."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    reads: int | None  # None when the check does not count them


@dataclass(frozen=True, slots=True)
class Corrupt:
    """An input file that stayed unreadable through the settle window."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one poll found."""

    ready: list[Candidate] = field(default_factory=list)
    corrupt: list[Corrupt] = field(default_factory=list)
    waiting: int = 0  # seen, not yet settled or not yet readable


@dataclass(slots=True)
class _Seen:
    """Observation history of one file."""

    sig: Signature
    since: float  # monotonic time the current signature was first seen
    unreadable_since: float | None = None
    reason: str = ""


def _default_check(path: Path) -> None:
    """Completeness check: the pod5 signatures at both ends (no memory map)."""
    from edgecall.io.reader import sniff_pod5
    sniff_pod5(path)


class Watcher:
    """Finds complete pod5 files under ``root`` by polling.

    Parameters
    ----------
    root : Path
        Folder to watch (recursively).
    settle : float
        Seconds a file's size must stay unchanged before it is opened, and again
        seconds it may stay unreadable before it is declared corrupt.
    exclude : sequence of Path
        Folders never descended into (the daemon's output, state, quarantine).
    check : callable, optional
        ``check(path) -> read count or None``; raises :class:`InputError` when the
        file is incomplete or corrupt. Defaults to ``sniff_pod5``.
    clock : callable, optional
        Monotonic clock (tests).
    """

    def __init__(self, root: Path, *, settle: float, exclude: Sequence[Path] = (),
                 check: Callable[[Path], int | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.settle = float(settle)
        self._exclude = {os.path.realpath(p) for p in exclude}
        self._check = check or _default_check
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._root_warned = False

    def files(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Every visible ``*.pod5`` regular file under root: (relative path, path, stat)."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if folder == self.root and not self._root_warned:
                    log.warning("cannot list %s: %s (will keep trying)", folder, exc.strerror)
                    self._root_warned = True
                continue
            if folder == self.root:
                self._root_warned = False
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if os.path.realpath(entry.path) not in self._exclude:
                            stack.append(Path(entry.path))
                    elif entry.name.lower().endswith(".pod5") and entry.is_file():
                        path = Path(entry.path)
                        yield path.relative_to(self.root).as_posix(), path, entry.stat()
                except OSError:
                    continue  # vanished between listing and stat

    def poll(self, known: Mapping[str, Signature | None]) -> ScanResult:
        """Scan once and classify files not already handled.

        ``known`` maps relative paths already in the journal to ``SETTLED`` (skip
        for good) or to the signature they were quarantined with (skip while it
        is unchanged; a changed file is considered afresh).
        """
        now = self._clock()
        result = ScanResult()
        present: set[str] = set()
        waiting = 0
        for rel, path, st in self.files():
            sig = (int(st.st_size), int(st.st_mtime_ns))
            if rel in known and (known[rel] is SETTLED or known[rel] == sig):
                continue
            present.add(rel)
            seen = self._seen.get(rel)
            if seen is None or seen.sig != sig:
                self._seen[rel] = _Seen(sig, now)
                waiting += 1
                continue
            if now - seen.since < self.settle:
                waiting += 1
                continue
            outcome = self._classify(rel, path, seen, now)
            if isinstance(outcome, Candidate):
                result.ready.append(outcome)
            elif isinstance(outcome, Corrupt):
                result.corrupt.append(outcome)
            else:
                waiting += 1
        for rel in list(self._seen):
            if rel not in present:
                del self._seen[rel]
        for rel in [c.rel for c in result.ready] + [c.rel for c in result.corrupt]:
            self._seen.pop(rel, None)
        return ScanResult(result.ready, result.corrupt, waiting)

    def _classify(self, rel: str, path: Path, seen: _Seen,
                  now: float) -> Candidate | Corrupt | None:
        """Open a settled file: ready, corrupt, or None (retry later)."""
        size, mtime_ns = seen.sig
        try:
            count = self._check(path)
            reads = None if count is None else int(count)
        except InputError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"{path}: cannot read file: {exc.strerror or exc}"
        else:
            return Candidate(rel, path, size, mtime_ns, reads)
        if seen.unreadable_since is None:
            seen.unreadable_since = now
            seen.reason = reason
            log.info("%s: not readable yet, will retry for %g s: %s", rel, self.settle, reason)
            return None
        if now - seen.unreadable_since < self.settle:
            return None
        return Corrupt(rel, path, size, mtime_ns, reason)
