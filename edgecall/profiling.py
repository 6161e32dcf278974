"""Profiling: does this machine keep up with a MinION, and at what cost in watts?

:func:`profile` runs the real pipeline (:class:`edgecall.pipeline.Basecaller`)
over the given reads, repeated until ``duration`` seconds have passed, once
per engine x threads x batch-size setting, while a :class:`~edgecall.telemetry.Sampler`
watches RSS, CPU and power. Each setting yields a :class:`SettingResult`:

* throughput: samples/s, bases/s, and *channels kept up with* = seconds of
  signal called per wall-clock second (samples/s divided by each read's own
  sample rate); 512 channels is a full MinION flow cell;
* engine latency per chunk (each batch's engine time divided by its size)
  and per batch, p50/p95/p99, from ``Basecaller.stats``;
* peak and steady (median of the second half) RSS, CPU utilisation;
* with a power source: mean watts and joules per megabase (whole-machine
  power as the source sees it, not just this process).

Engines that are not installed or not built are reported as unavailable.
:class:`ProfileReport` renders a terminal table, JSON and a PNG plot.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgecall import telemetry
from edgecall.errors import EdgecallError, InputError
from edgecall.types import CalledRead, Read

log = logging.getLogger(__name__)

SCHEMA = "edgecall.profile/1"
FLOW_CELL_CHANNELS = 512  # a MinION/GridION flow cell


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration to measure."""

    engine: str
    threads: int
    batch_size: int
    variant: str = "main"

    @property
    def label(self) -> str:
        """Short name for tables and plots, e.g. ``onnx:int8 t2 b32``."""
        eng = self.engine if self.variant in ("main", "") else f"{self.engine}:{self.variant}"
        return f"{eng} t{self.threads} b{self.batch_size}"


@dataclass(frozen=True, slots=True)
class Latency:
    """Percentiles of engine latency in milliseconds."""

    p50: float
    p95: float
    p99: float
    mean: float
    count: int


@dataclass(frozen=True, slots=True)
class SettingResult:
    """Everything measured for one :class:`Setting` (figures None when unavailable)."""

    setting: Setting
    available: bool
    error: str | None = None
    engine_name: str | None = None
    wall_s: float = 0.0
    reads: int = 0
    failed: int = 0
    bases: int = 0
    samples: int = 0
    chunks: int = 0
    signal_s: float = 0.0
    samples_per_s: float = 0.0
    bases_per_s: float = 0.0
    channels: float = 0.0
    realtime_fraction: float = 0.0
    engine_busy: float = 0.0  # fraction of wall time spent inside engine.run
    chunk_latency_ms: Latency | None = None
    batch_latency_ms: Latency | None = None
    rss_peak_mb: float = 0.0
    rss_steady_mb: float = 0.0
    cpu_percent: float = 0.0  # 100 = one core busy
    cpu_utilisation: float = 0.0  # share of the usable cores, 0..1
    power_source: str | None = None
    mean_watts: float | None = None
    energy_j: float | None = None
    j_per_mbase: float | None = None
    net_j_per_mbase: float | None = None  # energy above the idle baseline (with --idle)
    power_errors: int = 0


@dataclass(frozen=True, slots=True)
class ProfileReport:
    """The result of :func:`profile`: settings, inputs, model and machine."""

    created: str
    model: dict[str, Any]
    inputs: dict[str, Any]
    duration_s: float
    power_source: str | None
    machine: dict[str, Any]
    results: tuple[SettingResult, ...] = field(default_factory=tuple)
    idle_watts: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every figure (schema ``edgecall.profile/1``)."""
        out: dict[str, Any] = {"schema": SCHEMA}
        for name in ("created", "model", "inputs", "duration_s", "power_source", "idle_watts",
                     "machine"):
            out[name] = getattr(self, name)
        out["power_source"] = self.power_source or telemetry.NO_SENSOR
        out["results"] = []
        for r in self.results:
            d = asdict(r)
            d["label"] = r.setting.label
            out["results"].append(d)
        return out

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as indented JSON."""
        import json

        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    def table(self) -> str:
        """A plain-text table for the terminal."""
        return format_table(self)

    def plot(self, path: str | Path) -> None:
        """Throughput and energy per setting as a PNG (needs matplotlib)."""
        plot_report(self, path)


# ------------------------------------------------------------------- inputs


def load_reads(paths: Sequence[str | Path], *, recursive: bool = False,
               max_reads: int | None = None, max_samples: int = 50_000_000,
               ) -> tuple[list[Read], list[Path], int]:
    """Read the inputs into memory once (profiling replays them).

    Returns the reads, the pod5 files, and the number of unreadable reads/files.
    Stops after ``max_samples`` samples so a big run folder cannot fill RAM.
    """
    from edgecall.io.reader import find_pod5, iter_reads

    files = find_pod5(paths, recursive=recursive)
    reads: list[Read] = []
    bad, total = 0, 0
    for item in iter_reads(files, max_reads=max_reads):
        if not isinstance(item, Read):
            bad += 1
            log.warning("%s", item.reason)
            continue
        reads.append(item)
        total += item.num_samples
        if total >= max_samples:
            log.info("profiling the first %d reads (%d samples)", len(reads), total)
            break
    if not reads:
        raise InputError(f"{', '.join(map(str, paths))}: no readable reads to profile")
    return reads, files, bad


def _replay(reads: Sequence[Read], deadline: float) -> Iterator[Read]:
    """The reads over and over until ``deadline`` (always at least one read)."""
    for i, read in enumerate(itertools.cycle(reads)):
        if i and time.perf_counter() >= deadline:
            return
        yield read


def _latency(values_s: Iterable[float]) -> Latency | None:
    """Millisecond percentiles of a sequence of seconds."""
    v = np.asarray(list(values_s), dtype=np.float64) * 1e3
    if v.size == 0:
        return None
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return Latency(round(float(p50), 4), round(float(p95), 4), round(float(p99), 4),
                   round(float(v.mean()), 4), int(v.size))


# ---------------------------------------------------------------- measuring


def _load(card: Any, s: Setting, probe: Read) -> Any:
    """Build a Basecaller for a setting (raises whatever the engine raises)."""
    from edgecall.pipeline import Basecaller

    return Basecaller.load(card, engine=s.engine, threads=s.threads, variant=s.variant,
                           batch_size=s.batch_size, probe_read=probe)


def measure(basecaller: Any, setting: Setting, reads: Sequence[Read], duration: float,
            power: telemetry.PowerSource | None, *, interval: float = 0.25) -> SettingResult:
    """Time one Basecaller over ``reads`` replayed for ``duration`` seconds.

    Parameters
    ----------
    basecaller : edgecall.pipeline.Basecaller
        Already loaded; it is warmed up on one read first (not counted).
    setting : Setting
        What the basecaller was built with (for the report).
    reads : sequence of Read
        Replayed until ``duration`` has passed.
    duration : float
        Seconds of measurement (the last reads in flight are finished).
    power : PowerSource or None
        Sampled alongside.

    Returns
    -------
    SettingResult
    """
    for _ in basecaller.call(reads[:1]):  # warm-up: sessions, allocators, caches
        pass
    basecaller.stats = type(basecaller.stats)()
    sampler = telemetry.Sampler(power, interval=interval, reset_peak=True).start()
    t0 = time.perf_counter()
    n_reads = failed = bases = samples = 0
    signal_s = 0.0
    try:
        for item in basecaller.call(_replay(reads, t0 + duration)):
            if not isinstance(item, CalledRead):
                failed += 1
                continue
            n_reads += 1
            bases += len(item.sequence)
            samples += item.num_samples
            signal_s += item.num_samples / item.sample_rate
    finally:
        wall = time.perf_counter() - t0
        tel = sampler.stop()
    return _result(setting, basecaller, tel, wall=wall, reads=n_reads, failed=failed,
                   bases=bases, samples=samples, signal_s=signal_s)


def _result(setting: Setting, bc: Any, tel: telemetry.SamplerResult, *, wall: float,
            reads: int, failed: int, bases: int, samples: int, signal_s: float
            ) -> SettingResult:
    """Combine pipeline counters and telemetry into a SettingResult."""
    st = bc.stats
    lat = list(st.batch_latencies)
    sizes = list(st.batch_sizes)
    per_chunk = [t / max(1, n) for t, n in zip(lat, sizes, strict=True)]
    channels = signal_s / wall if wall > 0 else 0.0
    usable = _usable_cores()
    j_per_mbase = (tel.energy_joules / (bases / 1e6)
                   if tel.energy_joules is not None and bases else None)
    return SettingResult(
        setting=setting, available=True, engine_name=getattr(bc.engine, "name", None),
        wall_s=round(wall, 4), reads=reads, failed=failed, bases=bases, samples=samples,
        chunks=int(st.chunks), signal_s=round(signal_s, 4),
        samples_per_s=round(samples / wall, 2) if wall > 0 else 0.0,
        bases_per_s=round(bases / wall, 2) if wall > 0 else 0.0,
        channels=round(channels, 3), realtime_fraction=round(channels / FLOW_CELL_CHANNELS, 5),
        engine_busy=round(st.engine_seconds / wall, 4) if wall > 0 else 0.0,
        chunk_latency_ms=_latency(per_chunk), batch_latency_ms=_latency(lat),
        rss_peak_mb=round(tel.rss_peak_bytes / 2**20, 1),
        rss_steady_mb=round(tel.rss_steady_bytes / 2**20, 1),
        cpu_percent=round(tel.cpu_percent, 1),
        cpu_utilisation=round(tel.cpu_percent / 100.0 / usable, 4),
        power_source=tel.power_source,
        mean_watts=None if tel.mean_watts is None else round(tel.mean_watts, 3),
        energy_j=None if tel.energy_joules is None else round(tel.energy_joules, 3),
        j_per_mbase=None if j_per_mbase is None else round(j_per_mbase, 2),
        power_errors=tel.power_errors)


def _usable_cores() -> int:
    """CPU cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_engines(spec: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"onnx,onnx:int8,native"`` -> ``[("onnx", "main"), ("onnx", "int8"), ...]``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in (i.strip() for i in items):
        if item:
            name, _, variant = item.partition(":")
            out.append((name, variant or "main"))
    if not out:
        raise EdgecallError("--engine: give at least one engine (onnx, native, tflite)")
    return out


def profile(paths: Sequence[str | Path], *, model: str | Path | None = None,
            engines: str | Sequence[str] = "onnx", threads: Sequence[int] = (0,),
            batch_sizes: Sequence[int] = (32,), duration: float = 10.0,
            power_cmd: str | None = None, power: Any = "auto", recursive: bool = False,
            max_reads: int | None = None, idle: float = 0.0,
            on_result: Any = None) -> ProfileReport:
    """Measure the pipeline on ``paths`` for every engine/threads/batch-size setting.

    Parameters
    ----------
    paths : sequence of path
        pod5 files or folders.
    model : str or path, optional
        Model name or folder; default: chosen by the reads' chemistry.
    engines : str or sequence of str
        ``"onnx,native,tflite"``; ``name:variant`` picks a model variant (``onnx:int8``).
    threads : sequence of int
        Engine thread counts (0 = the engine's default, all cores).
    batch_sizes : sequence of int
        Chunks per engine call.
    duration : float
        Seconds of measurement per setting (reads are replayed as needed).
    power_cmd : str, optional
        External power meter command (prints watts).
    power : PowerSource, None or "auto"
        Overrides detection (tests); ``"auto"`` detects.
    idle : float
        Seconds of idle power measurement before the runs (0 = none); with it,
        each result also has the energy per megabase above idle.
    on_result : callable, optional
        Called with each :class:`SettingResult` as soon as it is measured.

    Returns
    -------
    ProfileReport
    """
    from edgecall import models

    src = telemetry.detect_power(power_cmd) if power == "auto" else power
    reads, files, bad = load_reads(paths, recursive=recursive, max_reads=max_reads)
    card = (models.resolve(str(model)) if model else None) or models.select_for(reads[0])
    usable, skipped = _compatible(card, reads)
    idle_w = measure_idle(src, idle)
    results = []
    unavailable: dict[tuple[str, str], str] = {}  # a missing engine is missing for every setting
    for (eng, variant), t, b in itertools.product(parse_engines(engines), threads, batch_sizes):
        s = Setting(eng, int(t), int(b), variant)
        if (eng, variant) in unavailable:
            res = SettingResult(setting=s, available=False, error=unavailable[eng, variant])
        else:
            res = _with_net_energy(_measure_setting(card, s, usable, duration, src), idle_w)
            if not res.available and res.error and not res.error.startswith("failed:"):
                unavailable[eng, variant] = res.error
        results.append(res)
        if on_result is not None:
            on_result(res)
    rates = sorted({r.sample_rate for r in usable})
    return ProfileReport(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model={"name": card.name, "folder": str(card.folder), "pore": card.pore,
               "sample_rate": card.sample_rate, "stride": card.stride,
               "chunk_size": card.chunk_size, "overlap": card.overlap,
               "architecture": card.raw.get("architecture", {})},
        inputs={"paths": [str(p) for p in paths], "files": len(files), "reads": len(usable),
                "samples": int(sum(r.num_samples for r in usable)),
                "sample_rates": rates, "unreadable": bad, "incompatible": skipped},
        duration_s=float(duration), power_source=src.name if src else None,
        machine=telemetry.machine_info(), results=tuple(results), idle_watts=idle_w)


def measure_idle(power: telemetry.PowerSource | None, seconds: float) -> float | None:
    """Mean watts over ``seconds`` with nothing running (None without a sensor)."""
    if power is None or seconds <= 0:
        return None
    sampler = telemetry.Sampler(power, interval=min(0.5, seconds / 4)).start()
    time.sleep(seconds)
    watts = sampler.stop().mean_watts
    log.info("idle power %.2f W", watts or 0.0)
    return None if watts is None else round(watts, 3)


def _with_net_energy(r: SettingResult, idle_w: float | None) -> SettingResult:
    """Add the J/Mbase above the idle baseline."""
    if idle_w is None or r.energy_j is None or not r.bases:
        return r
    net = (r.energy_j - idle_w * r.wall_s) / (r.bases / 1e6)
    return replace(r, net_j_per_mbase=round(net, 2))


def _compatible(card: Any, reads: list[Read]) -> tuple[list[Read], int]:
    """The reads the model can call (others are counted, not profiled)."""
    from edgecall import models

    ok, first = [], ""
    for r in reads:
        try:
            models.check_compatible(card, r)
        except EdgecallError as exc:
            first = first or str(exc)
            continue
        ok.append(r)
    if not ok:
        raise InputError(f"none of the {len(reads)} reads can be called with model "
                         f"{card.name}: {first}")
    return ok, len(reads) - len(ok)


def _measure_setting(card: Any, s: Setting, reads: list[Read], duration: float,
                     power: telemetry.PowerSource | None) -> SettingResult:
    """Load and measure one setting; an engine that cannot load is 'unavailable'."""
    try:
        bc = _load(card, s, reads[0])
    except Exception as exc:  # noqa: BLE001 - missing/unbuilt engines must not crash a profile
        reason = _one_line(exc)
        log.info("%s: unavailable: %s", s.label, reason)
        return SettingResult(setting=s, available=False, error=reason)
    log.info("profiling %s for %.0f s", s.label, duration)
    try:
        return measure(bc, s, reads, duration, power)
    except EdgecallError as exc:
        return SettingResult(setting=s, available=False, error=f"failed: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    """An exception as one line, with its type when the message is bare."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ImportError):
        return f"not installed ({msg or type(exc).__name__})"
    return msg if isinstance(exc, EdgecallError) else f"{type(exc).__name__}: {msg}"


# ------------------------------------------------------------------ output

_COLUMNS = (("setting", 18), ("samples/s", 11), ("bases/s", 10), ("channels", 9),
            ("chunk p50/p95/p99 ms", 22), ("RSS pk/st MB", 13), ("CPU %", 6),
            ("W", 6), ("J/Mbase", 8))


def _ms(v: float) -> str:
    """Milliseconds with about 3 significant figures."""
    return f"{v:.{3 if v < 1 else 2 if v < 10 else 1 if v < 100 else 0}f}"


def _fmt_row(r: SettingResult) -> list[str]:
    """The table cells of one result."""
    if not r.available:
        return [r.setting.label, f"unavailable: {r.error}"]
    lat = r.chunk_latency_ms
    lat_s = "/".join(_ms(v) for v in (lat.p50, lat.p95, lat.p99)) if lat else "-"
    return [r.setting.label, f"{r.samples_per_s:,.0f}", f"{r.bases_per_s:,.0f}",
            f"{r.channels:,.1f}", lat_s, f"{r.rss_peak_mb:.0f}/{r.rss_steady_mb:.0f}",
            f"{r.cpu_percent:.0f}",
            "-" if r.mean_watts is None else f"{r.mean_watts:.2f}",
            "-" if r.j_per_mbase is None else f"{r.j_per_mbase:,.1f}"
            + ("" if r.net_j_per_mbase is None else f" ({r.net_j_per_mbase:,.1f} net)")]


def format_table(report: ProfileReport) -> str:
    """Render a :class:`ProfileReport` as an aligned plain-text table."""
    cpu = report.machine.get("cpu", {})
    head = [f"model {report.model['name']} on {cpu.get('board') or cpu.get('model', '?')} "
            f"({report.machine.get('cores', {}).get('usable', '?')} cores); "
            f"{report.inputs['reads']} reads, {report.inputs['samples']:,} samples at "
            f"{'/'.join(map(str, report.inputs['sample_rates']))} Hz, "
            f"{report.duration_s:g} s per setting",
            f"power: {report.power_source or telemetry.NO_SENSOR}"
            + (f"; idle {report.idle_watts:.2f} W" if report.idle_watts is not None else "")]
    lines = ["  ".join(name.rjust(w) if i else name.ljust(w)
                       for i, (name, w) in enumerate(_COLUMNS))]
    for r in report.results:
        cells = _fmt_row(r)
        if len(cells) == 2:
            lines.append(f"{cells[0].ljust(_COLUMNS[0][1])}  {cells[1]}")
            continue
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))))
    foot = (f"channels = seconds of signal called per second; {FLOW_CELL_CHANNELS} = a full "
            "MinION flow cell in real time. Latency is engine time per chunk.")
    return "\n".join([*head, "", *lines, "", foot])


def plot_report(report: ProfileReport, path: str | Path) -> None:
    """Write a PNG: channels kept up with and J/Mbase per setting.

    Parameters
    ----------
    report : ProfileReport
        What to draw.
    path : path
        The PNG file to write.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgecallError("--plot needs matplotlib: pip install 'edgecall[plot]'") from None
    ok = [r for r in report.results if r.available]
    labels = [r.setting.label for r in ok]
    energy = [r.j_per_mbase for r in ok]
    has_energy = any(e is not None for e in energy)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(min(20.0, max(9.0, 0.9 * len(ok) + 6)), 4.8),
        gridspec_kw={"width_ratios": [1, 1] if has_energy else [4, 1]})
    x = np.arange(len(ok))
    channels = [r.channels for r in ok]
    bars = ax1.bar(x, channels, color="tab:blue")
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    ax1.axhline(FLOW_CELL_CHANNELS, color="tab:red", ls="--",
                label=f"real time, full flow cell ({FLOW_CELL_CHANNELS} channels)")
    ax1.set_ylim(0, 1.25 * max([FLOW_CELL_CHANNELS, *channels]))
    ax1.set_ylabel("MinION channels kept up with")
    ax1.set_title("Throughput")
    ax1.legend(loc="upper right", fontsize=8)
    if has_energy:
        bars = ax2.bar(x, [e or 0.0 for e in energy], color="tab:green")
        ax2.bar_label(bars, labels=[f"{r.mean_watts:.1f} W" if r.mean_watts is not None
                                    else "" for r in ok], fontsize=8)
        ax2.set_ylabel("J per megabase")
        ax2.set_title(f"Energy ({report.power_source})", fontsize=9)
        ax2.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    else:
        ax2.text(0.5, 0.5, telemetry.NO_SENSOR, ha="center", va="center",
                 transform=ax2.transAxes)
        ax2.set_title("Energy")
        ax2.set_axis_off()
    ax1.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"edgecall profile: {report.model['name']} on "
                 f"{report.machine.get('cpu', {}).get('model', '?')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), format="png", dpi=100)
    plt.close(fig)
