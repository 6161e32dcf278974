"""The ``edgecall serve`` main loop: watch, basecall file by file, journal, report.

One :class:`Service` owns one model instance (a
:class:`~edgecall.pipeline.Basecaller`) for its whole life and works through
the journal's pending files one at a time, oldest first::

    watcher.poll ──> journal (pending) ──> private copy ──> Basecaller.call(iter_reads([copy]))
                                                  │
                                       open_writer (temp name) ──> rename ──> fsync
                                                  │
                                           journal (done) ──> metrics, STATUS=, JSONL

The queue is the journal on disk, so memory does not grow with the number of
files waiting. Journal rows are keyed by the input's content identity, so a done
file that is renamed or moved is not basecalled again, and a file replaced with
new content gets an output name of its own. The input is copied to a private
file in the state folder before it is read (pod5 memory-maps what it reads; a
file truncated underneath would kill the daemon with SIGBUS), and a file that
changes while it is copied goes back to the watcher.

Signal handlers only set a flag and wake the loop: SIGTERM and
SIGINT abandon the current file at the next read (its temp output is deleted
and it stays pending) and the process exits 0; SIGHUP forces a rescan. The
systemd watchdog is pinged only while work progresses (from the loop between
reads, and while the engine completes batches inside a long read), so a hung
engine stops the pings and systemd restarts the service. An unexpected error
exits 1 for the same reason; the file is retried and quarantined only after
``max_crashes`` failed attempts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgecall import __version__
from edgecall.daemon import files
from edgecall.daemon.http import MetricsServer, ProcessProbe, parse_addr
from edgecall.daemon.journal import FileEntry, Journal, journal_path, safe_text
from edgecall.daemon.systemd import Heartbeat, Notifier
from edgecall.daemon.watcher import Candidate, Signature, Watcher
from edgecall.errors import EdgecallError
from edgecall.io.vet import Vetter
from edgecall.types import CalledRead, Failed, Read

log = logging.getLogger(__name__)

#: errnos on the output side that mean "try again later", not "bad input".
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}
_TELEMETRY_MAX_BYTES = 16 << 20


class Caller(Protocol):
    """What the service needs from a basecaller (``edgecall.pipeline.Basecaller``)."""

    def call(self, reads: Iterable[Read | Failed]) -> Iterator[CalledRead | Failed]:
        """Basecall a stream of reads, in order."""
        ...


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``edgecall serve`` is configured with (see ``edgecall serve --help``)."""

    watch: Path
    output: Path
    state: Path
    model: str | None = None
    engine: str = "onnx"
    threads: int = 0
    variant: str = "main"
    batch_size: int = 32
    fmt: str = "fastq"
    metrics_addr: str = "127.0.0.1:9464"
    poll_interval: float = 5.0
    settle: float = 30.0
    once: bool = False
    quarantine: Path | None = None
    quarantine_move: bool = False
    max_crashes: int = 3
    max_interrupts: int = 10
    telemetry_interval: float = 60.0
    command_line: str = ""


class _Abandon(Exception):
    """Stop working on the current file; leave it pending."""


class _CorruptInput(Exception):
    """The input turned out unreadable while being called."""


class _FileCounters:
    """Per-file tallies."""

    __slots__ = ("reads", "failed", "bases", "samples")

    def __init__(self) -> None:
        self.reads = self.failed = self.bases = self.samples = 0


def _default_loader(config: ServeConfig, probe: Read | None) -> tuple[Caller, str]:
    """Load the real Basecaller; returns (caller, model name)."""
    from edgecall.pipeline import Basecaller

    bc = Basecaller.load(config.model, engine=config.engine, threads=config.threads,
                         variant=config.variant, batch_size=config.batch_size, probe_read=probe)
    main = bc.card.is_main(config.variant)
    return bc, bc.card.name if main else f"{bc.card.name}:{config.variant}"


def _default_writer(path: Path, fmt: str, model_name: str, command_line: str) -> Any:
    """The real writer (temp name + atomic rename)."""
    from edgecall.io.writer import open_writer
    return open_writer(path, fmt, model_name=model_name, command_line=command_line)


def _default_reads(path: Path) -> Iterator[Read | Failed]:
    """Stream one pod5 file."""
    from edgecall.io.reader import iter_reads
    return iter_reads([path])


class Service:
    """The daemon. Build it, then call :meth:`run` from the main thread.

    Parameters
    ----------
    config : ServeConfig
    loader, writer, reads : callables, optional
        Dependency seams (real basecaller, writer and reader by default).
    notifier : Notifier, optional
        systemd notifier (from the environment by default).
    """

    def __init__(self, config: ServeConfig, *,
                 loader: Callable[[ServeConfig, Read | None], tuple[Caller, str]] | None = None,
                 writer: Callable[[Path, str, str, str], Any] | None = None,
                 reads: Callable[[Path], Iterator[Read | Failed]] | None = None,
                 notifier: Notifier | None = None) -> None:
        if config.fmt not in files.EXTENSIONS:
            raise EdgecallError(f"--format {config.fmt!r}: choose from "
                                f"{', '.join(files.EXTENSIONS)}")
        self.config = config
        self._loader = loader or _default_loader
        self._writer = writer or _default_writer
        self._reads = reads or _default_reads
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rescan = False
        self._lock = threading.Lock()
        self._pub: dict[str, Any] = {"state": "starting", "ready": False}
        self._known: dict[str, Signature | None] = {}
        self._caller: Caller | None = None
        self._model_name = config.model or "auto"
        self._session = {"files": 0, "reads": 0, "failed_reads": 0, "bases": 0, "samples": 0}
        self._history: deque[tuple[float, int, int]] = deque(maxlen=4096)
        self._probe = ProcessProbe()
        self._started = time.time()
        self._last_scan = -1e18
        self._last_status = 0.0
        self._last_telemetry = time.monotonic()
        self._waiting = 0
        self._scanned_once = False
        self.journal: Journal | None = None
        self.http: MetricsServer | None = None
        self._lockfile: Any = None
        self._backoff_until = 0.0
        self._backoff_seconds = 30.0
        self._requeue = False
        self._vetter = Vetter()
        self._heartbeat = Heartbeat(self.notifier, self._engine_progress)
        self.exit_reason = ""

    # -- lifecycle -------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop (safe from signal handlers and other threads)."""
        self.exit_reason = self.exit_reason or reason
        self._stop.set()
        self._wake.set()

    def request_rescan(self) -> None:
        """Ask the loop to rescan the watch folder now."""
        self._rescan = True
        self._wake.set()

    def run(self) -> int:
        """Start up, loop until stopped (or, with ``once``, until idle), shut down."""
        try:
            self._startup()
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _startup(self) -> None:
        """Lock the state, recover the journal, clean temps, serve metrics, load the model."""
        cfg = self.config
        for folder in (cfg.state, cfg.output):
            folder.mkdir(parents=True, exist_ok=True)
        self._lockfile = files.acquire_lock(cfg.state)
        self._probe.start()
        self.journal = Journal(journal_path(cfg.state))
        for rel in self.journal.recover():
            log.warning("%s: was interrupted; will be redone from scratch", rel)
        self._quarantine_crashers()
        for folder in [p for p in (cfg.output, cfg.quarantine) if p is not None]:
            for path in files.remove_stale_temps(folder):
                log.info("removed stale temporary file %s", path)
        self._snapshots = cfg.state / "snapshots"
        shutil.rmtree(self._snapshots, ignore_errors=True)
        self._snapshots.mkdir(parents=True, exist_ok=True)
        for entry in self.journal.entries():
            self._known[entry.path] = (entry.size, entry.mtime_ns)
        exclude = [p for p in (cfg.output, cfg.state, cfg.quarantine) if p is not None]
        self.watcher = Watcher(cfg.watch, settle=cfg.settle, exclude=exclude)
        if not cfg.watch.is_dir():
            log.warning("%s: watch folder does not exist yet; waiting for it", cfg.watch)
        self._start_http()
        if cfg.model is not None:
            self._load(None)
        self._publish(state="idle", ready=True)
        self.notifier.ready(self._status_line())
        self.notifier.watchdog()
        self._heartbeat.start()
        self._telemetry("start")
        log.info("watching %s -> %s (model %s, engine %s)", cfg.watch, cfg.output,
                 self._model_name, cfg.engine)

    def _start_http(self) -> None:
        """Bind the metrics endpoint (if enabled) and record its address in the state folder."""
        addr = parse_addr(self.config.metrics_addr)
        if addr is None:
            return
        try:
            self.http = MetricsServer(addr[0], addr[1], self.status).start()
        except OSError as exc:
            raise EdgecallError(f"--metrics-addr {self.config.metrics_addr}: cannot listen: "
                                f"{exc.strerror or exc}") from None
        (self.config.state / "metrics.url").write_text(self.http.url + "\n")
        log.info("metrics at %s/metrics, status at %s/status", self.http.url, self.http.url)

    def _load(self, probe: Read | None) -> None:
        """Load the one model instance used for the daemon's life."""
        t0 = time.monotonic()
        self._caller, self._model_name = self._loader(self.config, probe)
        engine = getattr(getattr(self._caller, "engine", None), "name", self.config.engine)
        log.info("model %s loaded in %.1f s (engine %s)", self._model_name,
                 time.monotonic() - t0, engine)
        self._publish(model=self._model_name)

    def _engine_progress(self) -> int:
        """Chunks run by the engine so far (0 if the caller does not count them)."""
        stats = getattr(self._caller, "stats", None)
        return int(getattr(stats, "chunks", 0) or 0)

    def _quarantine_crashers(self) -> None:
        """Quarantine files that failed too often (errors) or were interrupted too often."""
        assert self.journal is not None
        for entry in self.journal.entries("pending"):
            if entry.crashes >= self.config.max_crashes:
                self._quarantine(entry.key, entry.path, f"{entry.path}: gave up after "
                                 f"{entry.crashes} failed attempts; last: {entry.reason}",
                                 entry.size, entry.mtime_ns)
            elif entry.interrupts >= self.config.max_interrupts:
                self._quarantine(entry.key, entry.path, f"{entry.path}: gave up after "
                                 f"{entry.interrupts} interrupted attempts ({entry.reason})",
                                 entry.size, entry.mtime_ns)

    def _shutdown(self) -> None:
        """Tell systemd, stop serving, close the journal and the lock."""
        self._publish(state="stopping")
        self._heartbeat.stop()
        self.notifier.stopping(f"stopping: {self.exit_reason or 'done'}")
        if self.journal is not None:
            self._telemetry("stop")
        if self.http is not None:
            self.http.stop()
        self._probe.close()
        self._vetter.close()
        if self.journal is not None:
            self.journal.close()
        if self._lockfile is not None:
            self._lockfile.close()
        self.notifier.close()

    # -- the loop --------------------------------------------------------------

    def _loop(self) -> None:
        """Scan, process the oldest pending file, or wait; until stopped."""
        while not self._stop.is_set():
            try:
                if not self._step():
                    break
            except sqlite3.OperationalError as exc:  # state disk full, read-only, I/O error
                self._journal_failed(exc)
                self._idle()

    def _step(self) -> bool:
        """One turn of the loop; False when ``--once`` has nothing left to do."""
        assert self.journal is not None
        self._tick()
        if time.monotonic() < self._backoff_until:
            entry = None
        else:
            if self._requeue:  # the journal failed mid-file: that file is redone
                self.journal.requeue_running()
                self._requeue = False
            entry = self.journal.next_pending()
        if entry is not None:
            self._process(entry)
            self._scanned_once = False  # --once: look again before deciding we are idle
            return True
        if (self.config.once and self._waiting == 0 and self._scanned_once
                and time.monotonic() >= self._backoff_until):
            self.exit_reason = "--once: nothing left to do"
            return False
        self._idle()
        return True

    def _journal_failed(self, exc: sqlite3.OperationalError) -> None:
        """The journal cannot be written (e.g. a full state disk): wait and retry, not exit."""
        assert self.journal is not None
        wait = self._backoff_seconds
        self._backoff_until = time.monotonic() + wait
        self._requeue = True
        self._publish(state="waiting for the state disk", current=None)
        log.error("%s: cannot update the journal: %s; retrying in %g s", self.journal.path,
                  exc, wait)

    def _tick(self) -> None:
        """Periodic work: rescan, watchdog, STATUS=, telemetry."""
        now = time.monotonic()
        if self._rescan or now - self._last_scan >= self.config.poll_interval:
            self._rescan = False
            self._last_scan = now
            self._scan()
            self._scanned_once = True
        self.notifier.keepalive()
        if now - self._last_status >= 2.0:
            self._last_status = now
            self.notifier.status(self._status_line())
        if now - self._last_telemetry >= self.config.telemetry_interval:
            self._last_telemetry = now
            self._telemetry("sample")

    def _idle(self) -> None:
        """Sleep until the next poll, a signal, or a due watchdog ping."""
        timeout = self.config.poll_interval
        if self.notifier.watchdog_timeout:
            timeout = min(timeout, self.notifier.watchdog_timeout / 4)
        self._publish(state="idle", current=None)
        self._wake.wait(max(0.01, timeout))
        self._wake.clear()

    def _scan(self) -> None:
        """Poll the watch folder; queue ready files, quarantine corrupt ones."""
        assert self.journal is not None
        result = self.watcher.poll(self._known)
        for cand in result.ready:
            self._queue(cand)
        for bad in result.corrupt:
            ident = _identify(bad.path)
            if ident is not None:
                self._quarantine(ident.key, bad.rel, bad.reason, bad.size, bad.mtime_ns)
        self._waiting = result.waiting
        self._publish(counts=self.journal.counts(), waiting=result.waiting)

    def _queue(self, cand: Candidate) -> None:
        """Journal a complete file by its content: new, moved while queued, or already seen."""
        assert self.journal is not None
        ident = _identify(cand.path)
        if ident is None or (ident.size, ident.mtime_ns) != (cand.size, cand.mtime_ns):
            return  # vanished or changed since it settled: the watcher looks again
        old = self.journal.get(ident.key)
        if old is None:
            self.journal.add_pending(ident.key, cand.rel, ident.size, ident.mtime_ns, cand.reads)
            count = "" if cand.reads is None else f" ({cand.reads} reads)"
            log.info("%s: complete%s, queued", cand.rel, count)
        self._known[cand.rel] = (ident.size, ident.mtime_ns)  # once the journal has it
        if old is None or old.path == cand.rel:
            return
        if old.state in ("pending", "running"):
            self.journal.move(ident.key, cand.rel, ident.size, ident.mtime_ns)
            log.info("%s: moved here from %s while queued", cand.rel, old.path)
        else:
            log.info("%s: same content as %s (%s); not basecalled again", cand.rel, old.path,
                     old.state)

    # -- one file ----------------------------------------------------------------

    def _process(self, entry: FileEntry) -> None:
        """Basecall one input (from a private copy) into its own output, then mark it done."""
        assert self.journal is not None
        cfg, rel, key = self.config, entry.path, entry.key
        src = cfg.watch / rel
        ident = _identify(src)
        if ident is None or ident.key != key:
            gone = "vanished" if ident is None else "changed"
            self._changed(entry, f"{src}: {gone} since it was queued")
            return
        out_rel = entry.output or self._allocate(entry)
        out = cfg.output / out_rel
        self.journal.start(key, out_rel)
        self._publish(state="calling", current=rel, counts=self.journal.counts())
        counters = _FileCounters()
        t0 = time.monotonic()
        log.info("%s: basecalling -> %s", rel, out)
        snap = self._snapshots / f"{key}.pod5"
        try:
            files.snapshot(src, snap, ident)
            crashed = self._vetter.check(snap)
            if crashed is not None:  # it would have taken the daemon down with it
                raise _CorruptInput(_naming(_named(crashed, snap, src), src))
            if self._caller is None:
                self._load(self._probe_read(snap, src))
            out.parent.mkdir(parents=True, exist_ok=True)
            with self._writer(out, cfg.fmt, self._model_name, cfg.command_line) as writer:
                self._call_into(snap, src, writer, counters)
            files.fsync_file(out, cfg.output)
        except files.Changed as exc:
            self._changed(entry, str(exc))
        except _Abandon as exc:
            self.journal.abandon(key, str(exc))
            log.warning("%s: abandoned (%s); it stays queued", rel, exc)
        except _CorruptInput as exc:
            self._quarantine(key, rel, str(exc), entry.size, entry.mtime_ns)
        except OSError as exc:
            self._output_failed(entry, out, exc)
        except EdgecallError as exc:
            self._quarantine(key, rel, _naming(_named(str(exc), snap, src), src),
                             entry.size, entry.mtime_ns)
        except Exception as exc:
            # not known to be the input's fault (an engine bug, a broken install): fail
            # loudly so the service manager restarts us; the file is retried and only
            # quarantined after --max-crashes failures, never every input in turn
            log.exception("%s: unexpected error while basecalling", rel)
            reason = f"{src}: basecalling failed: {type(exc).__name__}: {_first_line(exc)}"
            self.journal.fail(key, reason)
            self.exit_reason = "unexpected error"
            raise EdgecallError(f"{reason} (exiting; the file will be retried, and quarantined "
                                f"after {self.config.max_crashes} failures)") from exc
        else:
            self._finish(entry, out_rel, counters, time.monotonic() - t0)
        finally:
            snap.unlink(missing_ok=True)
        self._publish(current=None, counts=self.journal.counts())

    def _allocate(self, entry: FileEntry) -> str:
        """The output name (relative to ``--output``) this input will own."""
        assert self.journal is not None
        if entry.key.startswith("path:"):  # a row from a version-1 journal: mirrored name
            return files.output_path(Path(), entry.path, self.config.fmt).as_posix()
        return files.allocate_output(self.config.output, entry.path, self.config.fmt,
                                     self.journal.output_taken)

    def _changed(self, entry: FileEntry, reason: str) -> None:
        """The input changed or vanished before it was done: forget it, watch it afresh."""
        assert self.journal is not None
        self.journal.forget(entry.key)
        self._known.pop(entry.path, None)
        log.warning("%s; it will be considered again once it is stable", reason)

    def _call_into(self, snap: Path, src: Path, writer: Any, counters: _FileCounters) -> None:
        """Stream the copy ``snap`` of ``src`` through the basecaller into ``writer``."""
        assert self._caller is not None
        stream = self._caller.call(_relabel(self._reads(snap), snap, src))
        with contextlib.closing(stream):  # type: ignore[type-var]
            for item in stream:
                if isinstance(item, Failed):
                    reason = _named(item.reason, snap, src)
                    if not item.read_id:
                        raise _CorruptInput(_naming(reason, src))
                    counters.failed += 1
                    log.warning("read %s failed: %s", item.read_id, reason)
                else:
                    writer.write(item)
                    self._count(counters, item)
                if self._stop.is_set():
                    raise _Abandon(self.exit_reason or "stop requested")
                self._tick()
                self._publish(current_reads=counters.reads)

    def _count(self, counters: _FileCounters, item: CalledRead) -> None:
        """Add one called read to the file and session tallies."""
        bases = len(item.sequence)
        counters.reads += 1
        counters.bases += bases
        counters.samples += int(item.num_samples)
        with self._lock:
            s = self._session
            s["reads"] += 1
            s["bases"] += bases
            s["samples"] += int(item.num_samples)
            self._history.append((time.monotonic(), s["samples"], s["bases"]))

    def _probe_read(self, snap: Path, src: Path) -> Read | None:
        """First read of the copy ``snap`` of ``src``, to pick a bundled model by chemistry."""
        for item in _relabel(self._reads(snap), snap, src):
            if isinstance(item, Read):
                return item
            if not item.read_id:
                raise _CorruptInput(_naming(_named(item.reason, snap, src), src))
        return None

    def _finish(self, entry: FileEntry, out_rel: str, c: _FileCounters, seconds: float) -> None:
        """Journal the file as done and report it."""
        assert self.journal is not None
        rel = entry.path
        self.journal.finish(entry.key, output=out_rel, reads=c.reads, failed_reads=c.failed,
                            bases=c.bases, samples=c.samples, seconds=seconds)
        with self._lock:
            self._session["files"] += 1
            self._session["failed_reads"] += c.failed
        expected = entry.expected_reads
        if expected is not None and expected != c.reads + c.failed:
            log.warning("%s: %d reads in the file but %d called + %d failed", rel, expected,
                        c.reads, c.failed)
        rate = c.samples / seconds if seconds > 0 else 0.0
        log.info("%s: done, %d reads, %d bases, %.0f samples/s", rel, c.reads, c.bases, rate)
        self._telemetry("file", file=rel, reads=c.reads, failed_reads=c.failed, bases=c.bases,
                        samples=c.samples, seconds=round(seconds, 3))

    def _output_failed(self, entry: FileEntry, out: Path, exc: OSError) -> None:
        """An I/O error: output-side ones back off and retry; others quarantine the input."""
        assert self.journal is not None
        rel = entry.path
        if exc.errno in _OUTPUT_ERRNOS:
            where = exc.filename or out
            self.journal.abandon(entry.key, f"{where}: {exc.strerror or exc}")
            wait = self._backoff_seconds
            self._backoff_until = time.monotonic() + wait
            log.error("%s: cannot write %s: %s; retrying in %g s", rel, where,
                      exc.strerror or exc, wait)
        else:
            self._quarantine(entry.key, rel, f"{self.config.watch / rel}: I/O error: "
                             f"{exc.strerror or exc}", entry.size, entry.mtime_ns)

    def _quarantine(self, key: str, rel: str, reason: str, size: int = 0,
                    mtime_ns: int = 0) -> None:
        """Record content ``key`` at ``rel`` as corrupt (and link/move it to the quarantine)."""
        assert self.journal is not None
        reason = safe_text(reason)
        self.journal.quarantine(key, rel, reason, size, mtime_ns)
        self._known[rel] = (size, mtime_ns)
        log.error("quarantined %s: %s", rel, reason)
        if self.config.quarantine is not None:
            src = self.config.watch / rel
            if src.is_file():
                files.place_in_quarantine(src, self.config.quarantine, rel, reason,
                                          self.config.quarantine_move)
        self._telemetry("quarantine", file=rel, reason=reason)

    # -- reporting ---------------------------------------------------------------

    def _publish(self, **fields: Any) -> None:
        """Update the status the HTTP thread reads."""
        with self._lock:
            self._pub.update(fields)

    def _rates(self) -> tuple[float, float]:
        """Samples/s and bases/s over the last minute of work (call under the lock)."""
        now = time.monotonic()
        recent = [h for h in self._history if now - h[0] <= 60.0]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0, 0.0
        dt = recent[-1][0] - recent[0][0]
        return (recent[-1][1] - recent[0][1]) / dt, (recent[-1][2] - recent[0][2]) / dt

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot (thread-safe): files, totals, rates, process figures."""
        with self._lock:
            pub = dict(self._pub)
            session = dict(self._session)
            sps, bps = self._rates()
        counts = pub.get("counts") or {}
        return {
            "version": __version__, "model": self._model_name, "engine": self.config.engine,
            "state": pub.get("state"), "up": True, "ready": bool(pub.get("ready")),
            "pid": os.getpid(), "uptime_s": round(time.time() - self._started, 3),
            "watch": str(self.config.watch), "output": str(self.config.output),
            "current_file": pub.get("current"), "current_reads": pub.get("current_reads", 0)
            if pub.get("current") else 0,
            "files": {"done": counts.get("done", 0), "queued": counts.get("pending", 0),
                      "running": counts.get("running", 0),
                      "quarantined": counts.get("quarantined", 0),
                      "waiting": int(pub.get("waiting") or 0)},
            "session": session,
            "journal": pub.get("journal_totals") or {},
            "rate": {"samples_per_s": round(sps, 1), "bases_per_s": round(bps, 1)},
            "engine_stats": self._engine_stats(),
            "process": self._probe.snapshot(),
        }

    def _engine_stats(self) -> dict[str, Any]:
        """Chunks, engine seconds and recent batch latencies from the basecaller's stats."""
        stats = getattr(self._caller, "stats", None)
        if stats is None:
            return {}
        lat: list[float] = []
        for _ in range(3):  # the engine thread appends concurrently
            try:
                lat = sorted(getattr(stats, "batch_latencies", ()))
                break
            except RuntimeError:
                continue
        return {"chunks": int(getattr(stats, "chunks", 0)),
                "engine_seconds": round(float(getattr(stats, "engine_seconds", 0.0)), 3),
                "batch_seconds_p50": round(lat[len(lat) // 2], 4) if lat else None,
                "batch_seconds_max": round(lat[-1], 4) if lat else None}

    def _status_line(self) -> str:
        """One line for systemd's STATUS=."""
        st = self.status()
        f = st["files"]
        head = (f"calling {st['current_file']} ({st['current_reads']} reads)"
                if st["current_file"] else "idle")
        return (f"{head}; {f['done']} done, {f['queued']} queued, {f['waiting']} waiting, "
                f"{f['quarantined']} quarantined; {st['rate']['samples_per_s']:.0f} samples/s")

    def _telemetry(self, event: str, **extra: Any) -> None:
        """Append one record to ``state/telemetry.jsonl`` (rotated at 16 MiB)."""
        assert self.journal is not None
        self._publish(journal_totals=self.journal.totals())
        st = self.status()
        record = {"time": round(time.time(), 3), "event": event, "model": st["model"],
                  "files": st["files"], "session": st["session"], "rate": st["rate"],
                  "process": st["process"], **extra}
        path = self.config.state / "telemetry.jsonl"
        try:
            if path.exists() and path.stat().st_size > _TELEMETRY_MAX_BYTES:
                os.replace(path, path.with_name(path.name + ".1"))
            _append_jsonl(path, record)
        except OSError as exc:
            log.warning("%s: cannot append telemetry: %s", path, exc.strerror or exc)


class OneLineLogs(logging.Filter):
    """Show string arguments of log records on one line (see ``journal.safe_text``).

    Watched file names come from whoever writes the watch folder; one with a
    newline in it must not be able to forge a log line. Tracebacks are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Escape the record's string arguments; never drops a record."""
        if isinstance(record.args, tuple):
            record.args = tuple(safe_text(a) if isinstance(a, str) else
                                safe_text(str(a)) if isinstance(a, Path) else a
                                for a in record.args)
        return True


def _identify(path: Path) -> files.Identity | None:
    """The content identity of ``path``, or None if it cannot be read now."""
    try:
        return files.identify(path)
    except OSError as exc:
        log.debug("%s: cannot identify: %s", path, exc)
        return None


def _relabel(reads: Iterable[Read | Failed], snap: Path, src: Path
             ) -> Iterator[Read | Failed]:
    """Reads of the private copy ``snap``, labelled with the input ``src`` they came from."""
    name = str(src)
    for item in reads:
        if isinstance(item, Read):
            yield dataclasses.replace(item, path=name)
        else:
            yield Failed(name, item.read_id, _named(item.reason, snap, src))


def _named(reason: str, snap: Path, src: Path) -> str:
    """A reason about the private copy ``snap``, told about the input ``src``."""
    return reason.replace(str(snap), str(src))


def _naming(reason: str, src: Path) -> str:
    """``reason``, prefixed with ``src`` unless it already names it."""
    return reason if str(src) in reason else f"{src}: {reason}"


def _first_line(exc: BaseException) -> str:
    """First line of an exception's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append via edgecall.telemetry when present, else a plain JSON line."""
    try:
        from edgecall.telemetry import append_jsonl  # type: ignore[attr-defined]
    except ImportError:
        import json
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        return
    append_jsonl(path, record)


@contextlib.contextmanager
def signals_to(service: Service) -> Iterator[None]:
    """Route SIGTERM/SIGINT (stop) and SIGHUP (rescan) to ``service`` while inside."""
    def stop(signum: int, _frame: object) -> None:
        service.request_stop(f"received {signal.Signals(signum).name}")

    def rescan(_signum: int, _frame: object) -> None:
        service.request_rescan()

    handlers = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: rescan}
    previous = {sig: signal.signal(sig, fn) for sig, fn in handlers.items()}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(config: ServeConfig, **seams: Any) -> int:
    """Run the daemon in this (main) thread until SIGTERM/SIGINT; return the exit code."""
    service = Service(config, **seams)
    with signals_to(service):
        code = service.run()
    log.info("stopped: %s", service.exit_reason or "done")
    return code
