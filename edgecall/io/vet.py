"""Read pod5 files once in a child process before this process reads them.

The pod5 and Arrow libraries are C++; on some corrupt files (a flipped byte in
the run-info table, for example) they crash the process with SIGSEGV instead of
raising an error. A one-shot run would die with no word about the file, and the
daemon would be restarted into the same crash. So each input is first read in a
child process along exactly the paths the reader stage takes
(:func:`edgecall.io.reader.iter_file` and :func:`~edgecall.io.reader.scan_runs`);
a file that kills the child is reported as corrupt, and the others are known to
be safe to read here. Python-level errors are left to the reader, which turns
them into ``Failed`` records with their own reasons.

The cost is one extra read of each file (signal decompression included) and one
interpreter start per batch of files: small beside basecalling it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import edgecall

_OK = "ok"


def _child_env() -> dict[str, str]:
    """The environment for the child: this process's edgecall first on the path."""
    root = str(Path(edgecall.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def crashers(paths: Sequence[Path], timeout: float | None = None) -> dict[Path, str]:
    """The files among ``paths`` that crash the pod5 reader, each with a one-line reason.

    Parameters
    ----------
    paths : sequence of Path
        pod5 files.
    timeout : float, optional
        Seconds the child may take for all files (None: no limit).
    """
    bad: dict[Path, str] = {}
    todo = list(paths)
    while todo:
        cmd = [sys.executable, "-m", "edgecall.io.vet", *(os.fsencode(p) for p in todo)]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env=_child_env(), timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            break  # slow, not crashing: the reader will take its time too
        done = proc.stdout.decode(errors="replace").split().count(_OK)
        if proc.returncode == 0 or done >= len(todo):
            break
        culprit = todo[done]
        bad[culprit] = f"{culprit}: corrupt pod5 file (the pod5 library crashed reading it: " \
            f"{_how(proc.returncode)})"
        todo = todo[done + 1:]
    return bad


class Vetter:
    """One long-lived child that reads files on request (the daemon's, one per file).

    Saves an interpreter start per file; a child that crashes on a file is
    replaced for the next one.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def check(self, path: Path) -> str | None:
        """None if ``path`` is safe to read here, else a one-line reason."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edgecall.io.vet", "--serve"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_child_env())
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(os.fsencode(path) + b"\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().strip()
        except OSError:
            answer = b""
        if answer == _OK.encode():
            return None
        code = proc.wait()
        return f"{path}: corrupt pod5 file (the pod5 library crashed reading it: {_how(code)})"

    def close(self) -> None:
        """Stop the child."""
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait()
        self._proc = None


def _how(returncode: int) -> str:
    """'SIGSEGV' for a child killed by a signal, else 'exit status N'."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def _main(args: Sequence[str]) -> int:
    """Child: read every file as the reader stage would; print 'ok' after each.

    With ``--serve`` the paths come one per line on stdin, until it closes.
    """
    from edgecall.io.reader import iter_file, scan_runs

    paths = (os.fsdecode(line.rstrip(b"\n")) for line in sys.stdin.buffer) \
        if list(args) == ["--serve"] else iter(args)
    for arg in paths:
        path = Path(arg)
        try:
            scan_runs([path])
            for _item in iter_file(path):
                pass
        except Exception:  # noqa: BLE001, S110 - Python errors are the reader's to report
            pass
        print(_OK, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
