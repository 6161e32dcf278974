"""The basecalling pipeline: reader -> signal -> batcher/engine -> stitch/decode -> writer.

Read top to bottom, this module is the data path of shared/DESIGN.md:

1. ``reader`` thread: pod5 reads (:mod:`edgecall.io.reader`), checked against the
   model's chemistry, calibrated, resampled, normalised and cut into chunks
   (:mod:`edgecall.signal`).
2. ``engine`` thread: chunks from consecutive reads are packed into batches
   ``[N, 1, T]`` and run by the engine; per-read outputs are stitched when a
   read's last chunk is done.
3. caller's thread: CTC or CRF decode (:mod:`edgecall.decode`) into
   :class:`~edgecall.types.CalledRead`, then the writer.

Stages are joined by bounded queues, so memory stays flat however large the
input is and a slow consumer back-pressures the reader. Worker errors travel
back to the caller; a read that fails becomes a counted ``Failed`` record.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import resource
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecall import decode as dec
from edgecall import models, signal
from edgecall.engines import Engine, create
from edgecall.errors import ChemistryMismatch, EdgecallError, InputError, ModelError
from edgecall.io.reader import find_pod5, iter_reads, scan_runs
from edgecall.io.resume import Resume
from edgecall.io.writer import check_overwrite, open_writer, remove_dead_temps
from edgecall.trim import Trimmer
from edgecall.types import CalledRead, Failed, Read

log = logging.getLogger(__name__)

_END = object()  # queue sentinel
QUEUE_READS = 16  # reads buffered between reader and engine
QUEUE_CALLED = 16  # stitched reads buffered between engine and decoder


@dataclass
class BasecallStats:
    """Counters the pipeline keeps; read by the CLI summary, profile and the daemon."""

    reads: int = 0
    failed: int = 0
    bases: int = 0
    samples: int = 0
    chunks: int = 0
    engine_seconds: float = 0.0
    batch_latencies: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=10000))
    batch_sizes: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=10000))


@dataclass(frozen=True, slots=True)
class _Pending:
    """A prepared read waiting for its chunks to be run."""

    read: Read
    starts: list[int]
    n: int  # samples at the model's rate
    chunks: np.ndarray  # [k, T]
    shift: float = 0.0  # pA shift/scale of the standardisation (sm/sd tags)
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class _Error:
    """An exception raised in a worker thread, carried to the caller."""

    exc: BaseException


class Basecaller:
    """One model + one engine, reused for any number of reads and files."""

    trimmer: Any = None  # a callable CalledRead -> CalledRead (edgecall.trim.Trimmer)

    def __init__(self, card: models.ModelCard, engine: Engine, *, batch_size: int = 32,
                 chunk_size: int | None = None, overlap: int | None = None,
                 decoder: str = "greedy", beam_width: int = 5,
                 min_samples: int = 1000) -> None:
        self.card, self.engine = card, engine
        self.batch_size = max(1, int(batch_size))
        self.chunk_size = int(chunk_size or card.chunk_size)
        self.overlap = int(card.overlap if overlap is None else overlap)
        self.decoder, self.beam_width = decoder, int(beam_width)
        self.min_samples = int(min_samples)
        self.stats = BasecallStats()
        s = card.stride
        if self.chunk_size % s or self.overlap % s or self.overlap >= self.chunk_size:
            raise ModelError(f"chunk size {self.chunk_size} and overlap {self.overlap} must be "
                             f"multiples of the model stride {s}, overlap < chunk size")

    @classmethod
    def load(cls, model: str | Path | models.ModelCard | None, *, engine: str = "onnx",
             threads: int = 0, variant: str = "main", probe_read: Read | None = None,
             **opts: Any) -> "Basecaller":
        """Resolve the model (by name, path, or the probe read's chemistry) and build it."""
        if isinstance(model, models.ModelCard):
            card = model
        else:
            card = models.resolve(str(model)) if model else None
        if card is None:
            if probe_read is None:
                raise ModelError("no model given and no read to choose one by chemistry")
            card = models.select_for(probe_read)
        if probe_read is not None:
            models.check_compatible(card, probe_read)
        models.verify(card, card.variant_path(variant).name if card.files else None)
        return cls(card, create(engine, card, threads=threads, variant=variant), **opts)

    # -- stage 1: reader -> prepared reads ---------------------------------------------
    def _prepare(self, read: Read) -> _Pending | Failed:
        """Check, normalise and chunk one read."""
        try:
            models.check_compatible(self.card, read)
        except EdgecallError as exc:
            return Failed(read.path, read.read_id, f"{read.path}: {exc}")
        if read.num_samples < self.min_samples:
            return Failed(read.path, read.read_id,
                          f"{read.path}: read {read.read_id}: {read.num_samples} samples is "
                          f"shorter than the minimum {self.min_samples}", kind="short")
        x, shift, scale = signal.prepare_scaled(read, self.card.norm, self.card.sample_rate)
        starts = signal.chunk_starts(x.shape[0], self.chunk_size, self.overlap,
                                     self.card.stride)
        if self.card.decoder == "crf" and x.shape[0] < self.chunk_size:
            # recurrent (LSTM) networks carry zero padding into every frame: a read
            # shorter than a chunk runs at its own length (padded to the stride only)
            n = -(-int(x.shape[0]) // self.card.stride) * self.card.stride
            chunks = np.pad(x, (0, n - x.shape[0]))[None, :].astype(np.float32, copy=False)
        else:
            chunks = np.stack([c.signal for c in signal.chunk_read(
                read.read_id, x, self.chunk_size, self.overlap, self.card.stride)])
        return _Pending(read, starts, int(x.shape[0]), chunks, shift, scale)

    def _reader(self, reads: Iterable[Read | Failed], out: queue.Queue, stop: threading.Event
                ) -> None:
        """Thread body: prepare reads and feed the engine stage."""
        try:
            for item in self._by_file(reads):
                if stop.is_set():
                    break
                job = self._prepare(item) if isinstance(item, Read) else item
                _put(out, job, stop)
        except BaseException as exc:  # noqa: BLE001 - carried to the caller
            _put(out, _Error(exc), stop)
        finally:
            _put(out, _END, stop)

    def _by_file(self, reads: Iterable[Read | Failed]) -> Iterator[Read | Failed]:
        """Decide chemistry per file: a file whose first read this model cannot call
        fails as a whole (one ``Failed`` naming the file), whatever order files come in."""
        current, refused = None, None
        for item in reads:
            if isinstance(item, Read) and item.path != current:
                current = item.path
                try:
                    models.check_compatible(self.card, item)
                except EdgecallError as exc:
                    refused = item.path
                    yield Failed(item.path, "", f"{item.path}: {exc}")
            if not (isinstance(item, Read) and item.path == refused):
                yield item

    # -- stage 2: batches through the engine, stitched per read --------------------------
    def _run_batch(self, chunks: list[np.ndarray]) -> np.ndarray:
        """Run one batch and record its latency."""
        batch = np.stack(chunks)[:, None, :]
        t0 = time.perf_counter()
        out = self.engine.run(batch)
        dt = time.perf_counter() - t0
        st = self.stats
        st.engine_seconds += dt
        st.batch_latencies.append(dt)
        st.batch_sizes.append(len(chunks))
        st.chunks += len(chunks)
        if self.card.output == "logits":
            out = dec.log_softmax(out)
        return out

    def _engine(self, inq: queue.Queue, out: queue.Queue, stop: threading.Event) -> None:
        """Thread body: pack chunks across reads into batches, emit stitched reads in order."""
        order: collections.deque = collections.deque()  # _Pending/Failed in input order
        posts: dict[int, list[np.ndarray]] = {}
        todo: list[tuple[_Pending, int]] = []  # (job, chunk index) not yet run
        done_input = False
        try:
            while not stop.is_set():
                idle = False
                if not done_input and len(todo) < self.batch_size:
                    try:
                        item = inq.get(timeout=0.05 if todo else 0.5)
                    except queue.Empty:
                        idle = True
                    else:
                        if item is _END:
                            done_input = True
                        elif isinstance(item, _Error):
                            _put(out, item, stop)
                            return
                        else:
                            order.append(item)
                            if isinstance(item, _Pending):
                                posts[id(item)] = []
                                todo.extend((item, i) for i in range(item.chunks.shape[0]))
                            self._emit_ready(order, posts, out, stop)
                            continue
                if todo and (len(todo) >= self.batch_size or done_input or idle):
                    self._batch_step(posts, todo)
                    self._emit_ready(order, posts, out, stop)
                elif done_input and not todo:
                    self._emit_ready(order, posts, out, stop)
                    break
        except BaseException as exc:  # noqa: BLE001
            _put(out, _Error(exc), stop)
        finally:
            _put(out, _END, stop)

    def _batch_step(self, posts: dict[int, list[np.ndarray]],
                    todo: list[tuple[_Pending, int]]) -> None:
        """Run the next batch of pending chunks and file the outputs per read."""
        take, todo[:] = todo[:self.batch_size], todo[self.batch_size:]
        by_len: dict[int, list[tuple[_Pending, int]]] = {}
        for item in take:  # full chunks batch together; a short read's own length runs alone
            by_len.setdefault(int(item[0].chunks.shape[1]), []).append(item)
        for group in by_len.values():
            out = self._run_batch([job.chunks[ci] for job, ci in group])
            for (job, _ci), post in zip(group, out, strict=True):
                posts[id(job)].append(post)

    def _emit_ready(self, order: collections.deque, posts: dict[int, list[np.ndarray]],
                    out: queue.Queue, stop: threading.Event) -> None:
        """Send finished reads (in input order) to the decoder."""
        while order:
            head = order[0]
            if isinstance(head, _Pending):
                got = posts[id(head)]
                if len(got) < head.chunks.shape[0]:
                    return
                post = signal.stitch(got, head.starts, head.n, self.chunk_size,
                                     self.card.stride)
                del posts[id(head)]
                order.popleft()
                _put(out, (head, post), stop)
            else:
                order.popleft()
                _put(out, head, stop)

    # -- stage 3: decode ----------------------------------------------------------------
    def _decode(self, job: _Pending, post: np.ndarray) -> CalledRead:
        """Decode one stitched read (CTC, or CRF when the card says so) into a CalledRead."""
        r = job.read
        crf = self.card.crf
        if self.card.decoder == "crf" and crf is not None:  # greedy|beam -> viterbi|beam
            d = dec.decode_crf(post, crf.state_len, beam_width=self.beam_width,
                               method="viterbi" if self.decoder == "greedy" else self.decoder,
                               qscore_scale=crf.qscore_scale, qscore_bias=crf.qscore_bias,
                               alphabet=self.card.alphabet)
        else:
            d = dec.decode(post, self.card.alphabet, method=self.decoder,
                           beam_width=self.beam_width)
        stride = self.card.stride * r.sample_rate / self.card.sample_rate
        return CalledRead(read_id=r.read_id, sequence=d.sequence, quality=d.quality,
                          moves=d.moves, stride=int(round(stride)), num_samples=r.num_samples,
                          trimmed_samples=0, mean_qscore=d.mean_qscore,
                          sample_rate=r.sample_rate, channel=r.channel,
                          read_number=r.read_number, start_sample=r.start_sample, run=r.run)

    def call(self, reads: Iterable[Read | Failed]) -> Iterator[CalledRead | Failed]:
        """Basecall a stream of reads, yielding results in input order.

        Parameters
        ----------
        reads : iterable of Read or Failed
            Typically :func:`edgecall.io.reader.iter_reads`; ``Failed`` records
            pass through unchanged (and are counted).
        """
        stop = threading.Event()
        q_reads: queue.Queue = queue.Queue(maxsize=QUEUE_READS)
        q_called: queue.Queue = queue.Queue(maxsize=QUEUE_CALLED)
        workers = [threading.Thread(target=self._reader, args=(reads, q_reads, stop),
                                    name="edgecall-reader", daemon=True),
                   threading.Thread(target=self._engine, args=(q_reads, q_called, stop),
                                    name="edgecall-engine", daemon=True)]
        for w in workers:
            w.start()
        try:
            while True:
                item = q_called.get()
                if item is _END:
                    break
                if isinstance(item, _Error):
                    raise item.exc
                yield self._finish(item)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=10)

    def _finish(self, item: Any) -> CalledRead | Failed:
        """Decode a stitched read (or pass a failure through) and count it."""
        st = self.stats
        if isinstance(item, Failed):
            st.failed += 1
            return item
        job, post = item
        called = _with_origin(self._decode(job, post), job, self.card.norm.method)
        if self.trimmer is not None:
            called = self.trimmer(called)
        st.reads += 1
        st.bases += len(called.sequence)
        st.samples += job.read.num_samples
        return called


def _with_origin(called: CalledRead, job: _Pending, norm_method: str) -> CalledRead:
    """Add what the writer's tags need from the raw read: well, file, scaling."""
    r = job.read
    return dataclasses.replace(called, well=r.well, path=r.path, end_reason=r.end_reason,
                               norm_shift=job.shift, norm_scale=job.scale,
                               norm_method=norm_method)


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put with back-pressure that still notices a stop request."""
    while True:
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            if stop.is_set():
                return


@dataclass
class RunSummary:
    """What a one-shot basecalling run did."""

    files: int = 0
    reads: int = 0
    failed: list[Failed] = field(default_factory=list)
    bases: int = 0
    samples: int = 0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    output: str = ""
    model: str = ""
    engine: str = ""
    discarded: bool = False  # the output was not written because of bad input
    below_min_qscore: int = 0  # written to the _fail file, or dropped on stdout
    resumed: int = 0  # records copied from --resume-from
    adapters_trimmed: int = 0  # reads with an adapter cut off their start
    adapter_bases: int = 0  # bases those cuts removed

    @property
    def samples_per_s(self) -> float:
        """Raw samples basecalled per wall-clock second."""
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def reads_per_s(self) -> float:
        """Reads per wall-clock second."""
        return self.reads / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def bases_per_s(self) -> float:
        """Bases per wall-clock second."""
        return self.bases / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def bad_files(self) -> list[Failed]:
        """Whole files that could not be read."""
        return [f for f in self.failed if not f.read_id]

    @property
    def errors(self) -> list[Failed]:
        """Failures due to bad input (short reads, skipped and counted, are not errors)."""
        return [f for f in self.failed if f.kind != "short"]

    @property
    def short_reads(self) -> int:
        """Reads skipped as shorter than the minimum."""
        return sum(1 for f in self.failed if f.kind == "short")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / (1024.0 * 1024.0)


def _first_read(files: Sequence[Path], read_ids: set[str] | None) -> Read | None:
    """The first read of the first file a bundled model can call (to pick that model).

    Files are looked at one by one and only their first read, so a file of
    another chemistry (or a bad file) first does not decide for the others.
    """
    for path in files:
        for item in iter_reads([path], read_ids=read_ids, max_reads=1):
            if isinstance(item, Read):
                try:
                    models.select_for(item)
                except ChemistryMismatch:
                    break
                return item
    return None


class _Discard(Exception):
    """Bad input was found: leave the output unwritten (its temporary file is deleted)."""


def _uncallable(files: Sequence[Path], read_ids: set[str] | None, summary: RunSummary,
                on_failure: Any) -> RunSummary:
    """No model given and no file has a read a bundled model can call: say why, per file."""
    for path in files:
        item = next(iter(iter_reads([path], read_ids=read_ids, max_reads=1)), None)
        if item is None:
            fail = Failed(str(path), "", f"{path}: no reads in this pod5 file"
                          + (" (none of the --read-ids)" if read_ids else ""))
        elif isinstance(item, Failed):
            fail = Failed(item.path, "", item.reason)
        else:
            try:
                models.select_for(item)
                continue
            except ChemistryMismatch as exc:
                fail = Failed(str(path), "", f"{path}: {exc}")
        summary.failed.append(fail)
        if on_failure is not None:
            on_failure(fail)
    if not summary.failed:
        raise EdgecallError("no pod5 files in the input; nothing to basecall")
    summary.discarded = True
    return summary


def _vetted(files: Sequence[Path], summary: RunSummary, on_failure: Any) -> list[Path]:
    """The files, less (and reporting) those that crash the pod5 library (io.vet)."""
    from edgecall.io.vet import crashers

    bad = crashers(files)
    for path, reason in bad.items():
        fail = Failed(str(path), "", reason)
        summary.failed.append(fail)
        if on_failure is not None:
            on_failure(fail)
    return [p for p in files if p not in bad]


def _check_output(output: str | Path | None) -> None:
    """Refuse an output that is a folder before any work is done; clear dead runs' temps."""
    if output is None or str(output) == "-":
        return
    p = Path(output)
    if p.is_dir():
        raise InputError(f"{p}: is a folder; give an output file name (e.g. {p}/calls.bam)")
    remove_dead_temps(p)


def basecall(inputs: Sequence[str | Path], output: str | Path | None = None, *,
             model: str | Path | models.ModelCard | None = None, engine: str = "onnx",
             threads: int = 0, batch_size: int = 32, chunk_size: int | None = None,
             overlap: int | None = None, recursive: bool = False, max_reads: int | None = None,
             read_ids: set[str] | None = None, decoder: str = "greedy", beam_width: int = 5,
             fmt: str | None = None, progress: bool = False,
             basecaller: Basecaller | None = None, stop: threading.Event | None = None,
             variant: str = "main", command_line: str = "",
             on_failure: Any = None, min_samples: int = 1000, emit_moves: bool = True,
             min_qscore: float = 0.0, fail_output: str | Path | None = None,
             force: bool = True, resume_from: str | Path | None = None,
             skip_bad: bool = False, trim_adapters: bool = False,
             kit_name: str = "", vet: bool = False) -> RunSummary:
    """Basecall pod5 files into one FASTQ/SAM/BAM output.

    Parameters
    ----------
    inputs : sequence of path
        pod5 files or folders of them.
    output : path, optional
        Output file (format from its extension); ``None`` writes FASTQ to stdout.
    model : str, path or ModelCard, optional
        Bundled model name or model folder; default: chosen by the reads' chemistry.
    engine : {"onnx", "native", "tflite"}
        Inference engine.
    on_failure : callable, optional
        Called with each :class:`Failed` as it happens (e.g. to print it).
    emit_moves : bool
        Write the move table (``mv:B:c``) into SAM/BAM and FASTQ headers.
    min_qscore : float
        Reads with a lower mean qscore go to the ``_fail`` companion file
        (``fail_output`` if given); on stdout they are dropped and counted.
    force : bool
        Replace an existing output; otherwise that is an error.
    resume_from : path, optional
        An earlier (possibly truncated) SAM/BAM: its reads are copied, not called again.
    trim_adapters : bool
        Cut the sequencing adapter off each read's start (:mod:`edgecall.trim`; ``ts``),
        that of ``kit_name`` if given, else of each read's own kit.
    skip_bad : bool
        Write the output even if some input was bad. Otherwise a bad file or read
        (not a short read) leaves the output file unwritten (``discarded``), so no
        file that errored ever has its reads renamed into place.
    vet : bool
        First read every input in a child process (:mod:`edgecall.io.vet`), so a file
        that crashes the pod5 library is reported as corrupt instead of killing this
        process (the command line does; costs an interpreter start and a read).

    Returns
    -------
    RunSummary
    """
    t0 = time.perf_counter()
    files = find_pod5(inputs, recursive=recursive)
    summary = RunSummary(files=len(files), output=str(output or "-"))
    if vet:
        files = _vetted(files, summary, on_failure)
    # --resume-from first: _check_output deletes dead runs' temporary files, and after a
    # kill -9 the file to resume from is one (Resume.scan moves it out of the way)
    resume = Resume.scan(resume_from) if resume_from else None
    _check_output(output)
    if output is not None and str(output) != "-" and not force and not (
            resume is not None and Path(output).resolve() == Path(resume_from or "").resolve()):
        check_overwrite(Path(output), force)
    if basecaller is None:
        probe = None if model else _first_read(files, read_ids)
        if model is None and probe is None:
            return _uncallable(files, read_ids, summary, on_failure)
        basecaller = Basecaller.load(model, engine=engine, threads=threads, variant=variant,
                                     probe_read=probe, batch_size=batch_size,
                                     chunk_size=chunk_size, overlap=overlap, decoder=decoder,
                                     beam_width=beam_width, min_samples=min_samples)
    summary.model, summary.engine = basecaller.card.name, basecaller.engine.name
    if not basecaller.card.is_main(variant):
        summary.model += f":{variant}"
    basecaller.trimmer = Trimmer(kit=kit_name) if trim_adapters else None
    bar = _progress(progress)
    try:
        _write_all(basecaller, files, output, summary, t0, bar, fmt=fmt, command_line=command_line,
                   read_ids=read_ids, max_reads=max_reads, stop=stop, on_failure=on_failure,
                   emit_moves=emit_moves, min_qscore=min_qscore, fail_output=fail_output,
                   resume=resume, skip_bad=skip_bad)
    except _Discard:
        summary.discarded = True
    if bar is not None:
        bar.close()
    if resume is not None and not summary.discarded:  # else keep what we resumed from
        resume.finish()
    if basecaller.trimmer is not None:
        summary.adapters_trimmed = basecaller.trimmer.trimmed
        summary.adapter_bases = basecaller.trimmer.bases
    summary.wall_s = time.perf_counter() - t0
    summary.peak_rss_mb = peak_rss_mb()
    return summary


def _write_all(basecaller: Basecaller, files: Sequence[Path], output: str | Path | None,
               summary: RunSummary, t0: float, bar: Any, *, fmt: str | None, command_line: str,
               read_ids: set[str] | None, max_reads: int | None,
               stop: threading.Event | None, on_failure: Any, emit_moves: bool,
               min_qscore: float, fail_output: str | Path | None, resume: Resume | None,
               skip_bad: bool) -> None:
    """Call every read into one output; raise _Discard (output deleted) on bad input."""
    with open_writer(output, fmt, model_name=basecaller.card.name,
                     sample_rate=basecaller.card.sample_rate, command_line=command_line,
                     runs=scan_runs(files), emit_moves=emit_moves, min_qscore=min_qscore,
                     fail_output=fail_output,
                     extra_read_groups=resume.read_groups if resume else ()) as w:
        reads = iter_reads(files, read_ids=read_ids, max_reads=max_reads)
        if resume is not None:
            summary.resumed = resume.copy_into(w)
            reads = _skip_done(reads, resume.read_ids)
        for item in basecaller.call(reads):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            if isinstance(item, Failed):
                summary.failed.append(item)
                if on_failure is not None:
                    on_failure(item)
                continue
            if not w.write(item):
                summary.below_min_qscore += 1
            summary.reads += 1
            summary.bases += len(item.sequence)
            summary.samples += item.num_samples
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{summary.samples / (time.perf_counter() - t0):,.0f} "
                                    "samples/s", refresh=False)
        if summary.errors and not skip_bad and w.tmp is not None:
            raise _Discard


def _skip_done(reads: Iterable[Read | Failed], done: set[str]) -> Iterator[Read | Failed]:
    """Leave out the reads an earlier run already wrote (``--resume-from``)."""
    for item in reads:
        if not (isinstance(item, Read) and item.read_id in done):
            yield item


def _progress(enabled: bool) -> Any:
    """A tqdm progress bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" reads", file=sys.stderr, dynamic_ncols=True, leave=False)
