"""Process and power telemetry: the one module ``edgecall profile`` and the daemon use.

* **Power sources** (implemented in :mod:`edgecall.power`, re-exported here),
  detected automatically and named by :func:`detect_power`: an explicit
  ``--power-cmd`` (a command printing watts), hwmon power meters
  (``/sys/class/hwmon/*/power*_input`` in µW, ``energy*_input`` in µJ, INA3221
  bus voltage x current), the Raspberry Pi 5 PMIC (``vcgencmd pmic_read_adc``,
  the sum of rail current x voltage) and Linux powercap/RAPL
  (``/sys/class/powercap/*/energy_uj``, package and dram domains, with the
  ``max_energy_range_uj`` wrap-around). With none of them the answer is
  ``None`` ("no power sensor"), never an invented figure.
* **A background** :class:`Sampler` thread that samples the process (RSS, CPU
  time) and the power source and integrates energy over a run.
* **The daemon API**: :func:`snapshot` (a lazily started process-wide sampler,
  see :func:`configure`) and :func:`append_jsonl`; plus :func:`machine_info`
  (from :mod:`edgecall.machine`) describing the host.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecall.errors import EdgecallError
from edgecall.machine import machine_info
from edgecall.power import (
    HWMON_ROOT,
    NO_SENSOR,
    POWERCAP_ROOT,
    CommandSource,
    HwmonSource,
    PmicSource,
    PowerReading,
    PowerSource,
    RaplSource,
    TelemetryError,
    detect_power,
    parse_pmic,
)

__all__ = ["PowerReading", "PowerSource", "RaplSource", "HwmonSource", "PmicSource",
           "CommandSource", "TelemetryError", "detect_power", "parse_pmic", "NO_SENSOR",
           "POWERCAP_ROOT", "HWMON_ROOT", "Sampler", "SamplerResult", "snapshot",
           "configure", "shutdown", "append_jsonl", "machine_info", "rss_bytes",
           "peak_rss_bytes", "reset_peak_rss"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- process


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes(proc_root: Path = Path("/proc")) -> int:
    """Peak RSS of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in (proc_root / "self" / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); True if it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _cpu_seconds() -> float:
    """User + system CPU seconds used by this process so far."""
    t = os.times()
    return t.user + t.system


# -------------------------------------------------------------------- sampler


@dataclass(frozen=True, slots=True)
class SamplerResult:
    """What a :class:`Sampler` measured between start and stop."""

    elapsed_s: float
    samples: int
    rss_peak_bytes: int
    rss_steady_bytes: int
    cpu_percent: float  # 100 = one core busy
    power_source: str | None
    energy_joules: float | None
    mean_watts: float | None
    power_errors: int = 0


@dataclass(slots=True)
class _State:
    """Mutable running totals of a sampler (guarded by its lock)."""

    t0: float = 0.0
    cpu0: float = 0.0
    last_t: float = 0.0
    last_cpu: float = 0.0
    last_watts: float | None = None
    last_joules: float | None = None
    power_t: float | None = None
    energy: float = 0.0
    power_now: float | None = None
    cpu_now: float = 0.0
    rss_now: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0


class Sampler:
    """Background thread sampling RSS, CPU and power; integrates energy.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Power
    meters (watts) are integrated with the trapezoid rule, energy counters
    are differenced; both are read once more at :meth:`stop` so the interval
    is covered exactly.

    Parameters
    ----------
    power : PowerSource, optional
        From :func:`detect_power`; ``None`` = no power sensor.
    interval : float
        Seconds between samples.
    keep_rss : int
        RSS samples kept for the steady-state figure (oldest dropped).
    reset_peak : bool
        Reset the process's peak RSS (VmHWM, also seen by ``getrusage``) at
        :meth:`start` so the peak is this run's; only for a process that owns
        its measurements (``edgecall profile``), never inside the daemon.
    """

    def __init__(self, power: PowerSource | None = None, *, interval: float = 0.25,
                 keep_rss: int = 100_000, reset_peak: bool = False) -> None:
        self.power = power
        self.interval = float(interval)
        self.keep_rss = keep_rss
        self._s = _State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reset_peak = reset_peak
        self.peak_reset = False

    def start(self) -> Sampler:
        """Reset the counters and start sampling in a daemon thread."""
        self.peak_reset = self.reset_peak and reset_peak_rss()
        now = time.perf_counter()
        self._s = _State(t0=now, cpu0=_cpu_seconds(), last_t=now, last_cpu=_cpu_seconds())
        self._sample_power(now)
        self._sample_process(now)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="edgecall-telemetry",
                                        daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        """Sample every ``interval`` seconds until stopped."""
        failures = 0
        while not self._stop.wait(self.interval):
            now = time.perf_counter()
            try:
                self._sample_process(now)
                self._sample_power(now)
            except Exception as exc:  # noqa: BLE001 - e.g. EMFILE: skip a sample, keep going
                failures += 1
                if failures == 1:
                    log.warning("telemetry sample failed (will keep trying): %s", exc)

    def _sample_process(self, now: float) -> None:
        """Record RSS and the CPU use since the previous sample."""
        rss, cpu = rss_bytes(), _cpu_seconds()
        with self._lock:
            s = self._s
            if now > s.last_t:
                s.cpu_now = 100.0 * (cpu - s.last_cpu) / (now - s.last_t)
            s.last_t, s.last_cpu, s.rss_now = now, cpu, rss
            s.rss.append((now, rss))
            if len(s.rss) > self.keep_rss:
                del s.rss[: len(s.rss) - self.keep_rss]

    def _sample_power(self, now: float) -> None:
        """Read the power source and add the energy since the previous reading."""
        if self.power is None:
            return
        try:
            r = self.power.read()
        except (OSError, ValueError, EdgecallError) as exc:
            with self._lock:
                self._s.errors += 1
                if self._s.errors == 1:
                    log.warning("power source %s: %s", self.power.name, exc)
            return
        with self._lock:
            s = self._s
            dt = now - s.power_t if s.power_t is not None else 0.0
            if r.watts is not None and s.last_watts is not None and dt > 0:
                s.energy += 0.5 * (r.watts + s.last_watts) * dt
            counted = 0.0
            if r.joules is not None and s.last_joules is not None:
                counted = r.joules - s.last_joules
                s.energy += counted
            if r.watts is not None or dt > 0:
                s.power_now = (r.watts or 0.0) + (counted / dt if dt > 0 else 0.0)
            s.last_watts, s.last_joules, s.power_t = r.watts, r.joules, now

    def latest(self) -> dict[str, Any]:
        """The most recent figures (the :func:`snapshot` record)."""
        with self._lock:
            s = self._s
            return {"rss_bytes": s.rss_now, "cpu_percent": round(s.cpu_now, 1),
                    "power_watts": s.power_now if self.power else None,
                    "energy_joules": s.energy if self.power else None,
                    "power_source": self.power.name if self.power else None}

    def stop(self) -> SamplerResult:
        """Stop the thread, take a final sample and summarise the run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        now = time.perf_counter()
        self._sample_process(now)
        self._sample_power(now)
        return self._result(now)

    def _result(self, now: float) -> SamplerResult:
        """Summarise the samples taken so far."""
        with self._lock:
            s = self._s
            elapsed = max(now - s.t0, 1e-9)
            rss = [v for _, v in s.rss]
            tail = [v for t, v in s.rss if t >= s.t0 + elapsed / 2] or rss
            peak = max(rss) if rss else 0
            if self.peak_reset:
                peak = max(peak, peak_rss_bytes())
            energy = s.energy if self.power else None
            return SamplerResult(
                elapsed_s=elapsed, samples=len(rss), rss_peak_bytes=peak,
                rss_steady_bytes=int(statistics.median(tail)) if tail else 0,
                cpu_percent=100.0 * (s.last_cpu - s.cpu0) / elapsed,
                power_source=self.power.name if self.power else None,
                energy_joules=energy,
                mean_watts=energy / elapsed if energy is not None else None,
                power_errors=s.errors)

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self.stop()


# --------------------------------------------------------- process-wide monitor

_monitor: Sampler | None = None
_monitor_lock = threading.Lock()


def configure(power_cmd: str | None = None, *, interval: float = 1.0,
              power: PowerSource | None | str = "auto") -> Sampler:
    """(Re)start the process-wide sampler behind :func:`snapshot`.

    Parameters
    ----------
    power_cmd : str, optional
        External meter command (see :class:`CommandSource`).
    interval : float
        Seconds between samples.
    power : PowerSource, None or "auto"
        An explicit source, ``None`` for none, or ``"auto"`` to detect one.

    Returns
    -------
    Sampler
        The running sampler.
    """
    global _monitor
    src = detect_power(power_cmd) if power == "auto" else power
    with _monitor_lock:
        if _monitor is not None:
            _monitor.stop()
        _monitor = Sampler(src if not isinstance(src, str) else None, interval=interval).start()
        return _monitor


def snapshot() -> dict[str, Any]:
    """Current process and power figures (starts the sampler on first use).

    Returns
    -------
    dict
        ``rss_bytes`` (int), ``cpu_percent`` (float, 100 = one core, over the
        last sampling interval), ``power_watts`` (float or None without a
        sensor), ``energy_joules`` (float since the sampler started, or None),
        ``power_source`` (str or None).
    """
    mon = _monitor
    if mon is None:
        with _monitor_lock:
            mon = _monitor
        if mon is None:
            mon = configure()
    return mon.latest()


def shutdown() -> None:
    """Stop the process-wide sampler (if any)."""
    global _monitor
    with _monitor_lock:
        if _monitor is not None:
            _monitor.stop()
            _monitor = None


def _json_default(obj: object) -> Any:
    """JSON for Paths, numpy scalars/arrays and dataclass-like objects."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}  # type: ignore[attr-defined]
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line (adds ``time`` if missing; creates folders).

    Parameters
    ----------
    path : path-like
        The JSONL file.
    record : dict
        JSON-serialisable values (Paths and numpy values are converted).
    """
    rec = record if "time" in record else {"time": round(time.time(), 3), **record}
    line = json.dumps(rec, default=_json_default, separators=(",", ":")) + "\n"
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(line)
