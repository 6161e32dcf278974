"""Test kit for the daemon tests: real ``python -m edgecall serve`` processes.

Inputs are coded pod5 files from :mod:`modelkit` (the level model decodes them),
so the tests can check every read id of every input against the outputs.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelkit

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(watch: Path, layout: dict[str, int], *, seed: int = 0, min_len: int = 80,
                max_len: int = 400) -> dict[str, set[str]]:
    """Write coded pod5 files at ``watch/<rel>`` with the given read counts; rel -> read ids."""
    out: dict[str, set[str]] = {}
    for i, (rel, n) in enumerate(sorted(layout.items())):
        path = watch / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        seqs = modelkit.make_coded_pod5(path, n, seed=seed * 1000 + i, min_len=min_len,
                                        max_len=max_len)
        out[rel] = set(seqs)
    return out


def staged_pod5(tmp: Path, n_reads: int, *, seed: int, min_len: int = 80,
                max_len: int = 400) -> tuple[Path, set[str]]:
    """A coded pod5 written outside the watch folder (to copy in later)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"staged_{seed}.pod5"
    seqs = modelkit.make_coded_pod5(path, n_reads, seed=seed, min_len=min_len, max_len=max_len)
    return path, set(seqs)


def copy_slowly(src: Path, dst: Path, *, chunks: int = 12, delay: float = 0.1,
                pause_at: int | None = None, pause: float = 0.0) -> None:
    """Copy ``src`` to ``dst`` in ``chunks`` appends, ``delay`` s apart (one longer pause)."""
    data = src.read_bytes()
    step = max(1, -(-len(data) // chunks))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as fh:
        for k, at in enumerate(range(0, len(data), step)):
            fh.write(data[at:at + step])
            fh.flush()
            os.fsync(fh.fileno())
            time.sleep(pause if k == pause_at else delay)


def serve_cmd(watch: Path, out: Path, state: Path, model: Path, *extra: str) -> list[str]:
    """Command line of a test daemon (fast polling, short settle, no metrics unless asked)."""
    args = [sys.executable, "-m", "edgecall", "serve", "--watch", str(watch), "--output",
            str(out), "--state", str(state), "--model", str(model), "--threads", "1",
            "--poll-interval", "0.1", "--settle", "0.4", "--telemetry-interval", "1"]
    if "--metrics-addr" not in extra:
        args += ["--metrics-addr", "off"]
    return [*args, *extra]


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a daemon with its stderr appended to ``log``."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    full_env = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    before = log.read_text(errors="replace").count(": watching ") \
        if log.exists() else 0
    fh = open(log, "ab")  # noqa: SIM115 - owned by the child's lifetime
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh, stderr=fh,
                                stdin=subprocess.DEVNULL)
    finally:
        fh.close()
    proc._dk_before = before  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send ``sig`` and wait; kill -9 (and fail the caller's asserts) on timeout."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -999


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    """Poll ``pred`` until truthy; AssertionError naming ``what`` (and the log) on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(interval)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def started(proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    """Wait until the daemon started by ``proc`` logged that it is watching (model loaded)."""
    before = getattr(proc, "_dk_before", 0)
    dk_count = lambda: log.read_text(errors="replace").count(": watching ")  # noqa: E731
    wait_for(lambda: dk_count() > before, timeout, "daemon start-up", proc=proc, log=log)


def journal(state: Path) -> dict[str, dict[str, Any]]:
    """Journal rows by path (empty before the daemon created it)."""
    db = state / "journal.sqlite3"
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        return {r["path"]: dict(r) for r in con.execute("SELECT * FROM files")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def states(state: Path) -> collections.Counter:
    """Number of journal rows per state."""
    return collections.Counter(r["state"] for r in journal(state).values())


def fastq_ids(out: Path) -> collections.Counter:
    """Read ids over every final (non-temp) FASTQ under ``out``."""
    ids: collections.Counter = collections.Counter()
    for path in sorted(out.rglob("*.fastq*")):
        if path.name.startswith("."):
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            for i, line in enumerate(fh):
                if i % 4 == 0:
                    ids[line[1:].split()[0]] += 1
    return ids


def temp_files(out: Path) -> list[Path]:
    """Writer temp files (``.*.tmp``) anywhere under ``out``."""
    return [p for p in out.rglob(".*.tmp")]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample name (with labels) -> value; raises ValueError on a malformed line."""
    out: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        if base not in types:
            raise ValueError(f"sample without # TYPE: {line!r}")
        out[name] = float(value)
    return out


def status_json(url: str) -> dict[str, Any]:
    """GET /status as JSON."""
    code, ctype, body = http_get(url + "/status")
    assert code == 200 and ctype.startswith("application/json"), (code, ctype)
    return json.loads(body)


def which(name: str) -> str | None:
    """shutil.which (kept here so tests import one kit)."""
    return shutil.which(name)
