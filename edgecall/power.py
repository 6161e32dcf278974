"""Power sources: hwmon meters, the Raspberry Pi 5 PMIC, RAPL, an external command.

Used through :mod:`edgecall.telemetry` (which re-exports everything here and
owns the sampler that integrates energy). :func:`detect_power` picks one
source and names it; ``None`` means "no power sensor" and no figure is ever
invented. Every source's ``read()`` returns a :class:`PowerReading`: power
meters give watts, energy counters give cumulative joules (wrap-around of
RAPL's ``energy_uj`` at ``max_energy_range_uj`` handled here).

The sysfs roots and the command runner are parameters so the tests can use
fake trees and captured ``vcgencmd`` output.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgecall.errors import EdgecallError

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
            log.info("vcgencmd found but no PMIC readings (not a Pi 5?): %s", exc)
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
