"""Filesystem helpers for the daemon: input identity and snapshots, output names, stale
temp cleanup, fsync, the single-instance lock and the quarantine folder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edgecall.errors import EdgecallError

log = logging.getLogger(__name__)

#: Output file extension per writer format.
EXTENSIONS = {"fastq": ".fastq", "sam": ".sam", "bam": ".bam"}


#: Bytes hashed at each end of a file for its identity (the pod5 footer is at the end).
IDENTITY_BYTES = 64 << 10
#: Longest file name most file systems accept (bytes).
NAME_MAX = 255
_TEMP_SUFFIX_MAX = 32  # ".<name>.<pid>.tmp" adds at most this much to a name


@dataclass(frozen=True, slots=True)
class Identity:
    """What a file is: its content key, and the stat fields that change with it."""

    key: str
    size: int
    mtime_ns: int
    ino: int


class Changed(Exception):
    """The input changed (rewritten, truncated, replaced) while it was being read."""


def _stat_sig(st: os.stat_result) -> tuple[int, int, int]:
    """(size, mtime_ns, inode) of a stat result."""
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)


def content_key(fh: IO[bytes], size: int) -> str:
    """sha256 of the size and the first and last ``IDENTITY_BYTES`` of an open file.

    A pod5 file's footer (at the end) holds its unique file identifier and the
    table offsets, so equal keys mean the same file content, wherever it lives.
    """
    h = hashlib.sha256(str(size).encode())
    fh.seek(0)
    h.update(fh.read(IDENTITY_BYTES))
    if size > IDENTITY_BYTES:
        fh.seek(max(IDENTITY_BYTES, size - IDENTITY_BYTES))
        h.update(fh.read(IDENTITY_BYTES))
    return h.hexdigest()


def identify(path: Path) -> Identity:
    """The :class:`Identity` of ``path`` (plain reads, never a memory map)."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = content_key(fh, int(st.st_size))
    return Identity(key, *_stat_sig(st))


def snapshot(src: Path, dst: Path, ident: Identity) -> None:
    """Copy ``src`` to the private file ``dst`` and check it is the content ``ident``.

    pod5 memory-maps its input, so reading a file that another process truncates
    or rewrites meanwhile kills the reader with SIGBUS; the daemon therefore
    reads this private copy. Raises :class:`Changed` if ``src`` changed during
    the copy (or is not ``ident`` any more); ``dst`` is then removed.
    """
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            before = _stat_sig(os.fstat(fin.fileno()))
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            copied = fout.tell()
            after = _stat_sig(os.fstat(fin.fileno()))
        now = _stat_sig(os.stat(src))
        if not before == after == now == (ident.size, ident.mtime_ns, ident.ino) \
                or copied != ident.size:
            raise Changed(f"{src}: changed while it was being read")
        with open(dst, "rb") as fh:
            if content_key(fh, copied) != ident.key:
                raise Changed(f"{src}: content changed since it was queued")
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def output_path(output_dir: Path, rel: str, fmt: str) -> Path:
    """Mirror ``rel`` (``a/b.pod5``) under ``output_dir`` with the format's extension."""
    rel_path = Path(rel)
    return output_dir / rel_path.parent / (rel_path.stem + EXTENSIONS[fmt])


def _fit_name(stem: str, ext: str) -> str:
    """``stem + ext``, the stem shortened (plus a hash) if the temp name would be too long."""
    limit = NAME_MAX - _TEMP_SUFFIX_MAX - len(ext.encode())
    raw = os.fsencode(stem)
    if len(raw) <= limit:
        return stem + ext
    tag = "~" + hashlib.sha256(raw).hexdigest()[:12]
    cut = raw[:limit - len(tag)]
    return os.fsdecode(cut) + tag + ext


def allocate_output(output_dir: Path, rel: str, fmt: str,
                    taken: Callable[[str], bool]) -> str:
    """A unique output name for input ``rel``, relative to ``output_dir``.

    The mirrored name (``a/b.pod5`` -> ``a/b.fastq``) unless another input owns it
    (``taken``, compared case-insensitively, so ``x.pod5`` and ``x.POD5`` never
    share an output), a file of that name already exists, or the name would be
    too long for the file system; then ``b_2.fastq``, ``b_3.fastq``, ...
    """
    rel_path = Path(rel)
    parent = rel_path.parent
    ext = EXTENSIONS[fmt]
    n = 1
    while True:
        stem = rel_path.stem if n == 1 else f"{rel_path.stem}_{n}"
        cand = (parent / _fit_name(stem, ext)).as_posix()
        if not taken(cand) and not os.path.lexists(output_dir / cand):
            return cand
        n += 1


def is_temp_name(name: str) -> bool:
    """True for the writer's temporary names (``.<name>.<pid>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def temp_owner_alive(name: str) -> bool:
    """True if the process named in a ``.<name>.<pid>.tmp`` file still runs."""
    pid = name[:-len(".tmp")].rsplit(".", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def remove_stale_temps(output_dir: Path) -> list[Path]:
    """Delete ``.*.tmp`` files under ``output_dir`` whose writer is gone; return them.

    Temporary files of a live process (another daemon sharing the output folder,
    a one-shot run) are left alone.
    """
    removed: list[Path] = []
    if not output_dir.is_dir():
        return removed
    for folder, _dirs, names in os.walk(output_dir):
        for name in names:
            if is_temp_name(name) and not temp_owner_alive(name):
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
