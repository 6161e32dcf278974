"""Process and power telemetry, shared by ``edgecall profile`` and the daemon.

Three pieces:

* **Power sources**, detected automatically and named (:func:`detect_power`):
  an explicit ``--power-cmd`` (a command printing watts), hwmon power meters
  (``/sys/class/hwmon/*/power*_input`` in µW, ``energy*_input`` in µJ, INA3221
  bus voltage x current), the Raspberry Pi 5 PMIC (``vcgencmd pmic_read_adc``,
  the sum of rail current x voltage) and Linux powercap/RAPL
  (``/sys/class/powercap/*/energy_uj``, package and dram domains, with the
  ``max_energy_range_uj`` wrap-around). With none of them the answer is
  ``None`` ("no power sensor"), never an invented figure.
* **A background** :class:`Sampler` thread that samples the process (RSS, CPU
  time) and the power source and integrates energy over a run.
* **The daemon API**: :func:`snapshot` (a lazily started process-wide sampler)
  and :func:`append_jsonl`; plus :func:`machine_info` describing the host.

The sysfs roots and the command runner are parameters so the tests can use
fake trees and captured ``vcgencmd`` output.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgecall.errors import EdgecallError
from edgecall.machine import machine_info

__all__ = ["PowerReading", "PowerSource", "RaplSource", "HwmonSource", "PmicSource",
           "CommandSource", "detect_power", "parse_pmic", "Sampler", "SamplerResult",
           "snapshot", "configure", "shutdown", "append_jsonl", "machine_info", "NO_SENSOR"]

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
HWMON_ROOT = Path("/sys/class/hwmon")
NO_SENSOR = "no power sensor"

#: hwmon drivers whose power figure is not the board's (GPUs, batteries).
_HWMON_SKIP = ("amdgpu", "radeon", "nouveau", "i915", "xe", "nvidia", "bat", "ucsi", "hidpp")


class TelemetryError(EdgecallError):
    """A power source that was asked for explicitly cannot be read."""


@dataclass(frozen=True, slots=True)
class PowerReading:
    """One reading of a power source.

    ``watts`` is instantaneous power from power meters (integrated over time by
    the sampler); ``joules`` a cumulative energy counter, already corrected for
    wrap-around (differenced by the sampler). Either may be ``None``.
    """

    watts: float | None = None
    joules: float | None = None


class PowerSource(Protocol):
    """Something that reports the machine's power or energy."""

    name: str

    def read(self) -> PowerReading:
        """Read the sensor now (raises OSError/TelemetryError on failure)."""
        ...


def _read_number(path: Path) -> float:
    """The number in a one-line sysfs file."""
    return float(path.read_text().split()[0])


# --------------------------------------------------------------------------- RAPL


@dataclass(slots=True)
class _Counter:
    """A wrapping hardware energy counter turned into a monotonic total (µJ)."""

    path: Path
    max_range: float
    last: float | None = None
    total: float = 0.0

    def update(self) -> float:
        """Read the counter; return the accumulated µJ since the first read."""
        cur = _read_number(self.path)
        if self.last is not None:
            delta = cur - self.last
            if delta < 0:  # the counter wrapped (or was reset)
                delta = cur + (self.max_range - self.last) if self.max_range > 0 else cur
            self.total += delta
        self.last = cur
        return self.total


class RaplSource:
    """Linux powercap/RAPL package and dram energy counters."""

    def __init__(self, zones: Sequence[tuple[str, Path, float]]) -> None:
        self._counters = [_Counter(path, rng) for _, path, rng in zones]
        self.domains = [name for name, _, _ in zones]
        self.name = f"rapl ({'+'.join(self.domains)})"
        self._lock = threading.Lock()

    @classmethod
    def discover(cls, root: Path = POWERCAP_ROOT) -> RaplSource | None:
        """Readable package-* and dram zones under ``root`` (None if there are none)."""
        zones: list[tuple[str, Path, float]] = []
        if not root.is_dir():
            return None
        for zone in sorted(root.iterdir()):
            if not zone.name.startswith("intel-rapl:"):  # skips intel-rapl-mmio duplicates
                continue
            try:
                name = (zone / "name").read_text().strip()
                energy = zone / "energy_uj"
                _read_number(energy)
                rng = _read_number(zone / "max_energy_range_uj") if (
                    zone / "max_energy_range_uj").exists() else 0.0
            except (OSError, ValueError, IndexError) as exc:
                log.debug("powercap zone %s unreadable: %s", zone, exc)
                continue
            if name.startswith("package") or name == "dram":
                zones.append((name, energy, rng))
        return cls(zones) if zones else None

    def read(self) -> PowerReading:
        """Total energy of all domains since the first read (J)."""
        with self._lock:
            return PowerReading(joules=sum(c.update() for c in self._counters) / 1e6)


# -------------------------------------------------------------------------- hwmon


@dataclass(frozen=True, slots=True)
class _HwmonChannel:
    """One hwmon figure: ``kind`` is power (µW), energy (µJ) or vi (mV x mA pair)."""

    label: str
    kind: str
    path: Path
    path2: Path | None = None


class HwmonSource:
    """hwmon power meters (INA219, INA226, INA3221 and similar)."""

    def __init__(self, channels: Sequence[_HwmonChannel]) -> None:
        self.channels = list(channels)
        self.name = f"hwmon ({', '.join(c.label for c in self.channels)})"
        self._energy = {c.label: _Counter(c.path, 0.0) for c in channels if c.kind == "energy"}
        self._lock = threading.Lock()

    @classmethod
    def discover(cls, root: Path = HWMON_ROOT) -> HwmonSource | None:
        """Power/energy channels of every board-level hwmon device under ``root``."""
        channels: list[_HwmonChannel] = []
        if not root.is_dir():
            return None
        for dev in sorted(root.iterdir()):
            try:
                name = (dev / "name").read_text().strip()
            except OSError:
                continue
            if name.lower().startswith(_HWMON_SKIP):
                continue
            channels.extend(_device_channels(dev, name))
        usable = [c for c in channels if _channel_readable(c)]
        return cls(usable) if usable else None

    def read(self) -> PowerReading:
        """Summed power of power channels (W) and energy of energy channels (J)."""
        watts, joules, have_w = 0.0, 0.0, False
        with self._lock:
            for ch in self.channels:
                if ch.kind == "energy":
                    joules += self._energy[ch.label].update() / 1e6
                elif ch.kind == "power":
                    watts += _read_number(ch.path) / 1e6
                    have_w = True
                else:  # bus voltage mV x current mA
                    assert ch.path2 is not None
                    watts += _read_number(ch.path) * _read_number(ch.path2) / 1e6
                    have_w = True
        return PowerReading(watts=watts if have_w else None,
                            joules=joules if self._energy else None)


def _device_channels(dev: Path, name: str) -> list[_HwmonChannel]:
    """The channels of one hwmon device: energy preferred, then power, then V x I."""
    energy = sorted(dev.glob("energy*_input"))
    if energy:
        return [_HwmonChannel(f"{name}:{p.name[:-6]}", "energy", p) for p in energy]
    power = sorted(dev.glob("power*_input")) or sorted(dev.glob("power*_average"))
    if power:
        return [_HwmonChannel(f"{name}:{p.name.split('_')[0]}", "power", p) for p in power]
    if name == "ina3221":  # in1..3 = bus voltage (mV), curr1..3 = current (mA)
        return [_HwmonChannel(f"{name}:ch{i}", "vi", dev / f"in{i}_input",
                              dev / f"curr{i}_input")
                for i in (1, 2, 3)
                if (dev / f"in{i}_input").exists() and (dev / f"curr{i}_input").exists()]
    return []


def _channel_readable(ch: _HwmonChannel) -> bool:
    """True if the channel's file(s) can be read as numbers."""
    try:
        for p in (ch.path, ch.path2):
            if p is not None:
                _read_number(p)
    except (OSError, ValueError, IndexError):
        return False
    return True


# ------------------------------------------------------------------ Pi 5 PMIC

_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")

Runner = Callable[[Sequence[str]], str]


def _run(cmd: Sequence[str]) -> str:
    """Run a command and return its stdout (TelemetryError on failure)."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TelemetryError(f"{cmd[0]}: cannot run: {exc}") from None
    if res.returncode != 0:
        err = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[0]
        raise TelemetryError(f"{' '.join(cmd)}: failed: {err}")
    return res.stdout


def parse_pmic(text: str) -> dict[str, float]:
    """Watts per rail from ``vcgencmd pmic_read_adc`` output.

    Lines look like ``   VDD_CORE_A current(7)=2.66731200A`` and
    ``   VDD_CORE_V volt(15)=0.72097620V``; a rail's power is its current times
    its voltage. Rails with only a voltage (EXT5V_V, BATT_V) are skipped.

    Parameters
    ----------
    text : str
        The command's standard output.

    Returns
    -------
    dict[str, float]
        Rail name (e.g. ``"VDD_CORE"``) to watts.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(4))
    return {rail: amps[rail] * volts[rail] for rail in amps if rail in volts}


class PmicSource:
    """Raspberry Pi 5 PMIC rails via ``vcgencmd pmic_read_adc``.

    The PMIC does not see the 5 V loads (USB devices, HATs, NVMe), so this is
    the board's core consumption, a lower bound of the wall power.
    """

    name = "rpi5-pmic (vcgencmd pmic_read_adc)"

    def __init__(self, vcgencmd: str = "vcgencmd", runner: Runner = _run) -> None:
        self.cmd = [vcgencmd, "pmic_read_adc"]
        self.runner = runner

    @classmethod
    def discover(cls, vcgencmd: str = "vcgencmd", runner: Runner | None = None,
                 ) -> PmicSource | None:
        """The PMIC source if ``vcgencmd pmic_read_adc`` works here."""
        if runner is None:
            if shutil.which(vcgencmd) is None:
                return None
            runner = _run
        src = cls(vcgencmd, runner)
        try:
            src.read()
        except (TelemetryError, OSError) as exc:
            log.debug("no PMIC: %s", exc)
            return None
        return src

    def read(self) -> PowerReading:
        """Sum of rail current x voltage (W)."""
        rails = parse_pmic(self.runner(self.cmd))
        if not rails:
            raise TelemetryError(f"{' '.join(self.cmd)}: no current/voltage rails in its output")
        return PowerReading(watts=sum(rails.values()))


# --------------------------------------------------------------- external command

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class CommandSource:
    """An external meter: a command whose output's first number is watts."""

    def __init__(self, command: str, runner: Runner = _run) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise TelemetryError("--power-cmd: empty command")
        self.runner = runner
        self.name = f"command ({command})"

    def read(self) -> PowerReading:
        """Run the command once and parse watts from its output."""
        out = self.runner(self.argv)
        m = _NUMBER.search(out)
        if not m or not math.isfinite(float(m.group())):
            raise TelemetryError(f"--power-cmd {shlex.join(self.argv)}: no number in its output "
                                 f"{out.strip()[:60]!r}")
        return PowerReading(watts=float(m.group()))


def detect_power(power_cmd: str | None = None, *, powercap_root: Path = POWERCAP_ROOT,
                 hwmon_root: Path = HWMON_ROOT, vcgencmd: str = "vcgencmd",
                 runner: Runner | None = None) -> PowerSource | None:
    """Find the best power source on this machine.

    Order: ``power_cmd`` (explicit; an error if it fails), hwmon meters, the
    Raspberry Pi 5 PMIC, RAPL. ``None`` means "no power sensor".

    Parameters
    ----------
    power_cmd : str, optional
        A shell-style command that prints the current power in watts.
    powercap_root, hwmon_root : Path
        sysfs roots (injectable for tests).
    vcgencmd : str
        The vcgencmd executable.
    runner : callable, optional
        Runs a command and returns its stdout (for tests).

    Returns
    -------
    PowerSource or None
    """
    if power_cmd:
        src = CommandSource(power_cmd, runner or _run)
        src.read()
        return src
    for found in (HwmonSource.discover(hwmon_root), PmicSource.discover(vcgencmd, runner),
                  RaplSource.discover(powercap_root)):
        if found is not None:
            log.info("power source: %s", found.name)
            return found
    log.info(NO_SENSOR)
    return None


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
        while not self._stop.wait(self.interval):
            now = time.perf_counter()
            self._sample_process(now)
            self._sample_power(now)

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
