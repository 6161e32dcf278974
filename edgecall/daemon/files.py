"""Filesystem helpers for the daemon: output names, stale temp cleanup, fsync,
the single-instance lock and the quarantine folder.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from edgecall.errors import EdgecallError

log = logging.getLogger(__name__)

#: Output file extension per writer format.
EXTENSIONS = {"fastq": ".fastq", "sam": ".sam", "bam": ".bam"}


def output_path(output_dir: Path, rel: str, fmt: str) -> Path:
    """Mirror ``rel`` (``a/b.pod5``) under ``output_dir`` with the format's extension."""
    rel_path = Path(rel)
    return output_dir / rel_path.parent / (rel_path.stem + EXTENSIONS[fmt])


def is_temp_name(name: str) -> bool:
    """True for the writer's temporary names (``.<name>.<pid>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_stale_temps(output_dir: Path) -> list[Path]:
    """Delete every ``.*.tmp`` file under ``output_dir``; return what was removed."""
    removed: list[Path] = []
    if not output_dir.is_dir():
        return removed
    for folder, _dirs, names in os.walk(output_dir):
        for name in names:
            if is_temp_name(name):
                path = Path(folder) / name
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
    return removed


def fsync_file(path: Path, root: Path | None = None) -> None:
    """Flush ``path`` and the folders holding it (up to ``root``) to stable storage.

    Syncing every folder up to ``root`` also makes newly created mirrored
    folders survive a power cut, not just the file's own entry.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = path.parent
    while True:
        fsync_dir(folder)
        if root is None or folder == root or folder.parent == folder:
            break
        folder = folder.parent


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to stable storage; ignored where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def acquire_lock(state_dir: Path) -> IO[str]:
    """Take an exclusive lock on ``state_dir/edgecall.lock``; keep the handle open.

    Raises :class:`EdgecallError` if another daemon holds it.
    """
    path = state_dir / "edgecall.lock"
    fh = open(path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise EdgecallError(f"{state_dir}: another edgecall serve is already using this "
                                "state folder") from None
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def place_in_quarantine(src: Path, quarantine_dir: Path, rel: str, reason: str,
                        move: bool) -> Path | None:
    """Hard-link (or copy, or with ``move`` rename) ``src`` to ``quarantine_dir/rel``.

    A ``<name>.reason.txt`` beside it holds the reason. Returns the new path, or
    None (logged) if the file could not be placed; the journal has the reason anyway.
    """
    dst = quarantine_dir / rel
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.unlink()
        _link_or_copy(src, dst, move)
        (dst.parent / (dst.name + ".reason.txt")).write_text(reason + "\n")
    except OSError as exc:
        log.warning("%s: could not place in quarantine %s: %s", src, quarantine_dir,
                    exc.strerror or exc)
        return None
    return dst


def _link_or_copy(src: Path, dst: Path, move: bool) -> None:
    """rename/link when on the same file system; else copy via a temp name."""
    try:
        if move:
            os.rename(src, dst)
        else:
            os.link(src, dst)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK):
            raise
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    if move:
        src.unlink()
