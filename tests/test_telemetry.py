"""Tests for edgecall.telemetry: power sources on fake sysfs trees, the PMIC parser,
the sampler's energy integration, snapshot/append_jsonl and machine_info."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from edgecall import telemetry as tm
from edgecall.machine import cpu_description

# Format of `vcgencmd pmic_read_adc` on a Raspberry Pi 5 (firmware 2023-2024):
# rail name, `current(n)=...A` / `volt(n)=...V`, right-aligned names. Values
# are an idle board's; three voltage-only rails have no current partner.
PMIC_OUTPUT = """\
 3V7_WL_SW_A current(0)=0.04782057A
   3V3_SYS_A current(1)=0.04684464A
   1V8_SYS_A current(2)=0.17078780A
  DDR_VDD2_A current(3)=0.02049453A
  DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.18933040A
    0V8_SW_A current(6)=0.32888840A
  VDD_CORE_A current(7)=0.92871990A
   3V3_DAC_A current(17)=0.00054945A
   3V3_ADC_A current(18)=0.00018315A
   0V8_AON_A current(16)=0.00586080A
      HDMI_A current(22)=0.01636140A
 3V7_WL_SW_V volt(8)=3.70534400V
   3V3_SYS_V volt(9)=3.31467300V
   1V8_SYS_V volt(10)=1.80903400V
  DDR_VDD2_V volt(11)=1.10292900V
  DDR_VDDQ_V volt(12)=0.61575030V
   1V1_SYS_V volt(13)=1.10512700V
    0V8_SW_V volt(14)=0.80292960V
  VDD_CORE_V volt(15)=0.72097620V
   3V3_DAC_V volt(20)=3.30952000V
   3V3_ADC_V volt(21)=3.30952000V
   0V8_AON_V volt(19)=0.79765500V
      HDMI_V volt(23)=5.16034000V
     EXT5V_V volt(24)=5.17105900V
      BATT_V volt(25)=0.00598290V
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parse_pmic_pairs_rails_and_sums_power() -> None:
    rails = tm.parse_pmic(PMIC_OUTPUT)
    assert len(rails) == 12  # EXT5V_V and BATT_V have no current
    assert "EXT5V" not in rails and "BATT" not in rails
    assert rails["VDD_CORE"] == pytest.approx(0.92871990 * 0.72097620)
    assert rails["3V7_WL_SW"] == pytest.approx(0.04782057 * 3.70534400)
    total = sum(rails.values())
    assert total == pytest.approx(1.89845, abs=1e-4)  # an idle Pi 5: ~1.9 W on its rails
    src = tm.PmicSource(runner=lambda cmd: PMIC_OUTPUT)
    assert src.read().watts == pytest.approx(total)


def test_pmic_unusable_output_is_not_a_source() -> None:
    assert tm.PmicSource.discover(runner=lambda cmd: "error=1 error_msg=\"bad\"\n") is None
    assert tm.parse_pmic("garbage\n") == {}
    calls: list[list[str]] = []

    def runner(cmd):
        calls.append(list(cmd))
        return PMIC_OUTPUT

    found = tm.PmicSource.discover(vcgencmd="/opt/vc/bin/vcgencmd", runner=runner)
    assert found is not None and calls[0] == ["/opt/vc/bin/vcgencmd", "pmic_read_adc"]


def _rapl_tree(root: Path, pkg_uj: int, dram_uj: int, core_uj: int = 5) -> None:
    _write(root / "intel-rapl:0" / "name", "package-0\n")
    _write(root / "intel-rapl:0" / "energy_uj", f"{pkg_uj}\n")
    _write(root / "intel-rapl:0" / "max_energy_range_uj", "262143328850\n")
    _write(root / "intel-rapl:0:0" / "name", "core\n")
    _write(root / "intel-rapl:0:0" / "energy_uj", f"{core_uj}\n")
    _write(root / "intel-rapl:0:1" / "name", "dram\n")
    _write(root / "intel-rapl:0:1" / "energy_uj", f"{dram_uj}\n")
    _write(root / "intel-rapl:0:1" / "max_energy_range_uj", "65712999613\n")
    # the MMIO interface duplicates the package domain and must not be added
    _write(root / "intel-rapl-mmio:0" / "name", "package-0\n")
    _write(root / "intel-rapl-mmio:0" / "energy_uj", "123\n")


def test_rapl_package_and_dram_with_wraparound(tmp_path: Path) -> None:
    _rapl_tree(tmp_path, pkg_uj=262143328850 - 1_000_000, dram_uj=10_000_000)
    src = tm.RaplSource.discover(tmp_path)
    assert src is not None and src.domains == ["package-0", "dram"]
    assert src.name == "rapl (package-0+dram)"
    assert src.read().joules == 0.0
    # package wraps: 1 J before the top of its range, then 2 J after zero
    _write(tmp_path / "intel-rapl:0" / "energy_uj", "2000000\n")
    _write(tmp_path / "intel-rapl:0:1" / "energy_uj", "10500000\n")
    assert src.read().joules == pytest.approx(3.0 + 0.5)
    _write(tmp_path / "intel-rapl:0" / "energy_uj", "4000000\n")
    assert src.read().joules == pytest.approx(5.5)


def test_rapl_unreadable_or_absent(tmp_path: Path) -> None:
    assert tm.RaplSource.discover(tmp_path / "missing") is None
    _write(tmp_path / "intel-rapl:0" / "name", "package-0\n")  # no energy_uj (e.g. root-only)
    assert tm.RaplSource.discover(tmp_path) is None


def test_hwmon_power_energy_and_ina3221(tmp_path: Path) -> None:
    _write(tmp_path / "hwmon0" / "name", "cpu_thermal\n")
    _write(tmp_path / "hwmon0" / "temp1_input", "48000\n")
    _write(tmp_path / "hwmon1" / "name", "ina219\n")
    _write(tmp_path / "hwmon1" / "power1_input", "4250000\n")  # µW
    _write(tmp_path / "hwmon2" / "name", "ina3221\n")
    for i, (mv, ma) in enumerate([(5000, 400), (3300, 100)], start=1):
        _write(tmp_path / "hwmon2" / f"in{i}_input", f"{mv}\n")
        _write(tmp_path / "hwmon2" / f"curr{i}_input", f"{ma}\n")
    _write(tmp_path / "hwmon3" / "name", "amdgpu\n")  # a GPU is not the board
    _write(tmp_path / "hwmon3" / "power1_average", "30000000\n")
    src = tm.HwmonSource.discover(tmp_path)
    assert src is not None
    assert src.name == "hwmon (ina219:power1, ina3221:ch1, ina3221:ch2)"
    r = src.read()
    assert r.joules is None and r.watts == pytest.approx(4.25 + 2.0 + 0.33)

    _write(tmp_path / "hwmon4" / "name", "ina238\n")
    _write(tmp_path / "hwmon4" / "energy1_input", "1000000\n")  # µJ
    _write(tmp_path / "hwmon4" / "power1_input", "999\n")  # energy preferred over power
    src = tm.HwmonSource.discover(tmp_path)
    assert src is not None and "ina238:energy1" in src.name and "ina238:power1" not in src.name
    assert src.read().joules == 0.0
    _write(tmp_path / "hwmon4" / "energy1_input", "3500000\n")
    assert src.read().joules == pytest.approx(2.5)


def test_detect_power_order_and_no_sensor(tmp_path: Path) -> None:
    empty = tmp_path / "none"
    kw = dict(powercap_root=empty, hwmon_root=empty, vcgencmd=str(tmp_path / "no-vcgencmd"))
    assert tm.detect_power(**kw) is None
    _rapl_tree(tmp_path / "powercap", 1, 1)
    kw["powercap_root"] = tmp_path / "powercap"
    assert tm.detect_power(**kw).name.startswith("rapl")
    pmic = tm.detect_power(**kw, runner=lambda cmd: PMIC_OUTPUT)
    assert pmic.name.startswith("rpi5-pmic")
    cmd = tm.detect_power("meter --watts", **kw, runner=lambda argv: "3.5 W\n")
    assert cmd.name == "command (meter --watts)" and cmd.read().watts == 3.5


def test_power_cmd_real_process_and_errors() -> None:
    src = tm.detect_power(f"{sys.executable} -c 'print(\"power: 7.25 W\")'")
    assert src is not None and src.read().watts == 7.25
    with pytest.raises(tm.TelemetryError, match="no number"):
        tm.detect_power(f"{sys.executable} -c 'print(\"n/a\")'")
    with pytest.raises(tm.TelemetryError, match="failed"):
        tm.detect_power(f"{sys.executable} -c 'raise SystemExit(3)'")
    with pytest.raises(tm.TelemetryError, match="cannot run"):
        tm.detect_power("/nonexistent/meter")


class _Ramp:
    """A fake power meter whose watts follow a callable of time."""

    name = "fake"

    def __init__(self, watts=None, joules=None) -> None:
        self.watts, self.joules, self.t0 = watts, joules, time.perf_counter()

    def read(self) -> tm.PowerReading:
        t = time.perf_counter() - self.t0
        return tm.PowerReading(watts=self.watts(t) if self.watts else None,
                               joules=self.joules(t) if self.joules else None)


def test_sampler_integrates_power_and_energy_counters() -> None:
    with tm.Sampler(_Ramp(watts=lambda t: 4.0), interval=0.02) as s:
        time.sleep(0.3)
        live = s.latest()
    assert live["power_watts"] == pytest.approx(4.0) and live["power_source"] == "fake"
    assert live["energy_joules"] == pytest.approx(4.0 * 0.3, rel=0.3)
    s = tm.Sampler(_Ramp(joules=lambda t: 10.0 + 6.0 * t), interval=0.02).start()
    x = [0.0] * 3_000_000  # some memory so RSS moves
    time.sleep(0.3)
    res = s.stop()
    del x
    assert res.mean_watts == pytest.approx(6.0, rel=0.05)
    assert res.energy_joules == pytest.approx(6.0 * res.elapsed_s, rel=0.05)
    assert res.samples >= 5 and res.rss_peak_bytes >= res.rss_steady_bytes > 20_000_000
    assert 0.0 <= res.cpu_percent < 250.0


def test_sampler_without_power_reports_none() -> None:
    import os

    c0, t0 = sum(os.times()[:2]), time.perf_counter()
    s = tm.Sampler(None, interval=0.02).start()
    while sum(os.times()[:2]) - c0 < 0.2:  # burn 0.2 s of CPU however loaded the box is
        sum(range(1000))
    res = s.stop()
    expect = 100.0 * (sum(os.times()[:2]) - c0) / (time.perf_counter() - t0)
    assert res.power_source is None and res.energy_joules is None and res.mean_watts is None
    assert res.cpu_percent == pytest.approx(expect, rel=0.25)
    assert res.cpu_percent > 10.0


def test_sampler_counts_failing_power_reads() -> None:
    class Broken:
        name = "broken"

        def read(self) -> tm.PowerReading:
            raise OSError("sensor gone")

    res = tm.Sampler(Broken(), interval=0.02).start().stop()
    assert res.power_errors >= 2 and res.energy_joules == 0.0


def test_snapshot_keys_and_append_jsonl(tmp_path: Path) -> None:
    tm.configure(power=_Ramp(watts=lambda t: 2.0), interval=0.02)
    try:
        time.sleep(0.1)
        snap = tm.snapshot()
    finally:
        tm.shutdown()
    assert set(snap) == {"rss_bytes", "cpu_percent", "power_watts", "energy_joules",
                         "power_source"}
    assert snap["rss_bytes"] > 0 and snap["power_watts"] == 2.0 and snap["energy_joules"] > 0
    log = tmp_path / "state" / "telemetry.jsonl"
    tm.append_jsonl(log, snap)
    tm.append_jsonl(log, {"time": 1.0, "path": tmp_path, "n": 3})
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[0]["power_source"] == "fake" and lines[0]["time"] > 1e9
    assert lines[1] == {"time": 1.0, "path": str(tmp_path), "n": 3}


def test_machine_info_and_arm_cpuinfo(tmp_path: Path) -> None:
    info = tm.machine_info()
    assert info["cores"]["logical"] >= 1 and info["memory_bytes"] > 0
    assert info["libraries"]["numpy"] and info["python"].startswith(("CPython", "PyPy"))
    assert isinstance(info["kernels"], str) and info["kernels"]
    json.dumps(info)
    cpuinfo = "".join(
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 "
        "sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0b\n\n" for i in range(4))
    cpuinfo += "Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
    _write(tmp_path / "cpuinfo", cpuinfo)
    d = cpu_description(tmp_path, dt_model=tmp_path / "no-model")
    assert d["model"] == "Cortex-A76" and d["board"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert d["isa"]["neon"] and d["isa"]["dotprod"] and not d["isa"]["i8mm"]
    assert not d["isa"]["avx2"]


def test_sampler_peak_rss_catches_short_spikes() -> None:
    import numpy as np

    big = np.ones(25_000_000)  # 200 MB, then freed: the process's old peak
    del big
    if not tm.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs not writable here")
    s = tm.Sampler(None, interval=30.0, reset_peak=True).start()
    spike = np.ones(12_500_000)  # 100 MB between two samples
    del spike
    res = s.stop()
    assert res.samples == 2  # start and stop only: the spike was never sampled
    assert res.rss_peak_bytes >= res.rss_steady_bytes + 80_000_000
    assert res.rss_peak_bytes < res.rss_steady_bytes + 180_000_000  # old 200 MB peak reset
    quiet = tm.Sampler(None, interval=30.0).start()  # no reset: peak from samples only
    assert quiet.stop().rss_peak_bytes < res.rss_peak_bytes - 80_000_000
