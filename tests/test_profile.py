"""Tests for edgecall.profiling and ``edgecall profile``: report schema, table, PNG plot,
unavailable engines, a CLI run in a real process and a short run on real reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecall import profiling, telemetry
from edgecall.errors import EdgecallError

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SETTING_KEYS = {
    "setting": dict, "label": str, "available": bool, "wall_s": float, "reads": int,
    "failed": int, "bases": int, "samples": int, "chunks": int, "signal_s": float,
    "samples_per_s": float, "bases_per_s": float, "channels": float,
    "realtime_fraction": float, "engine_busy": float, "chunk_latency_ms": dict,
    "batch_latency_ms": dict, "rss_peak_mb": float, "rss_steady_mb": float,
    "cpu_percent": float, "cpu_utilisation": float, "power_source": (str, type(None)),
    "mean_watts": (float, type(None)), "energy_j": (float, type(None)),
    "j_per_mbase": (float, type(None)), "power_errors": int,
}


class FixedMeter:
    """A power meter that always reads 5 W."""

    name = "fixed 5 W meter"

    def read(self) -> telemetry.PowerReading:
        return telemetry.PowerReading(watts=5.0)


@pytest.fixture(scope="module")
def report(tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]]) -> profiling.ProfileReport:
    path, _ = coded_pod5
    return profiling.profile([path], model=tiny_model, engines="onnx,nosuch,onnx:int8",
                             threads=[1], batch_sizes=[4, 16], duration=0.6,
                             power=FixedMeter(), idle=0.3)


def _check_schema(d: dict) -> None:
    assert d["schema"] == "edgecall.profile/1"
    for key in ("created", "model", "inputs", "duration_s", "power_source", "machine"):
        assert key in d, key
    assert {"cpu", "cores", "memory_bytes", "os", "python", "libraries"} <= set(d["machine"])
    assert {"neon", "dotprod", "avx2", "avx512_vnni"} <= set(d["machine"]["cpu"]["isa"])
    assert {"files", "reads", "samples", "sample_rates"} <= set(d["inputs"])
    for r in d["results"]:
        assert {"engine", "threads", "batch_size", "variant"} == set(r["setting"])
        if not r["available"]:
            assert isinstance(r["error"], str) and r["error"]
            continue
        for key, typ in SETTING_KEYS.items():
            assert isinstance(r[key], typ if isinstance(typ, tuple) else (typ, int)), key
        assert set(r["chunk_latency_ms"]) == {"p50", "p95", "p99", "mean", "count"}


def test_report_schema_and_figures(report: profiling.ProfileReport, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    report.write_json(out)
    d = json.loads(out.read_text())
    _check_schema(d)
    assert d["power_source"] == "fixed 5 W meter" and d["idle_watts"] == pytest.approx(5.0)
    by_label = {r["label"]: r for r in d["results"]}
    assert list(by_label) == ["onnx t1 b4", "onnx t1 b16", "nosuch t1 b4", "nosuch t1 b16",
                              "onnx:int8 t1 b4", "onnx:int8 t1 b16"]
    assert "unknown engine" in by_label["nosuch t1 b4"]["error"]
    assert "int8" in by_label["onnx:int8 t1 b16"]["error"]
    for label in ("onnx t1 b4", "onnx t1 b16"):
        r = by_label[label]
        assert r["available"] and r["engine_name"] == "onnx" and r["failed"] == 0
        assert r["reads"] >= d["inputs"]["reads"]  # replayed for the whole duration
        assert r["wall_s"] >= 0.6
        assert r["samples_per_s"] == pytest.approx(r["samples"] / r["wall_s"], rel=1e-3)
        assert r["channels"] == pytest.approx(r["signal_s"] / r["wall_s"], rel=1e-3)
        assert r["channels"] == pytest.approx(r["samples_per_s"] / 4000, rel=1e-3)
        assert r["realtime_fraction"] == pytest.approx(r["channels"] / 512, rel=1e-3)
        lat = r["chunk_latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert r["batch_latency_ms"]["count"] == lat["count"] > 0
        assert r["mean_watts"] == pytest.approx(5.0)
        assert r["j_per_mbase"] == pytest.approx(r["energy_j"] / (r["bases"] / 1e6), rel=1e-2)
        assert abs(r["net_j_per_mbase"]) < 0.05 * r["j_per_mbase"]  # a flat 5 W = all idle
        assert r["rss_peak_mb"] >= r["rss_steady_mb"] > 10


def test_table_lists_every_setting(report: profiling.ProfileReport) -> None:
    text = report.table()
    assert "power: fixed 5 W meter" in text
    assert "nosuch t1 b4" in text and "unavailable: unknown engine" in text
    row = next(line for line in text.splitlines() if line.startswith("onnx t1 b16"))
    assert row.split()[-4] == "5.00" and row.endswith("net)")  # W, J/Mbase (net)
    assert "idle 5.00 W" in text


def test_plot_is_a_png(report: profiling.ProfileReport, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    for rep, name in ((report, "power.png"), (_without_power(report), "nopower.png")):
        out = tmp_path / name
        rep.plot(out)
        assert out.read_bytes()[:8] == PNG_MAGIC
        img = matplotlib.image.imread(out)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400


def _without_power(rep: profiling.ProfileReport) -> profiling.ProfileReport:
    """The same report as if no sensor existed."""
    import dataclasses

    res = tuple(dataclasses.replace(r, power_source=None, mean_watts=None, energy_j=None,
                                    j_per_mbase=None, net_j_per_mbase=None)
                for r in rep.results)
    return dataclasses.replace(rep, power_source=None, idle_watts=None, results=res)


def test_no_sensor_is_said_not_invented(report: profiling.ProfileReport) -> None:
    d = _without_power(report).to_dict()
    assert d["power_source"] == "no power sensor"
    assert all(r.get("mean_watts") is None for r in d["results"])
    text = _without_power(report).table()
    assert "power: no power sensor\n" in text
    row = next(line for line in text.splitlines() if line.startswith("onnx t1 b16"))
    assert row.split()[-2:] == ["-", "-"]  # W and J/Mbase left empty, not invented


def test_parse_engines_and_replay() -> None:
    assert profiling.parse_engines("onnx, onnx:int8,native,native:fp32") == [
        ("onnx", "main"), ("onnx", "int8"), ("native", "main"), ("native", "fp32")]
    with pytest.raises(EdgecallError):
        profiling.parse_engines(" , ")
    reads = ["a", "b", "c"]
    assert list(profiling._replay(reads, time.perf_counter() - 1)) == ["a"]  # at least one
    it = profiling._replay(reads, time.perf_counter() + 0.2)
    got = [next(it) for _ in range(7)]
    assert got == ["a", "b", "c", "a", "b", "c", "a"]
    time.sleep(0.25)
    assert list(it) == []


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgecall", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


def test_cli_profile_real_process(tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]],
                                  tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path, _ = coded_pod5
    js, png = tmp_path / "p.json", tmp_path / "p.png"
    res = _run_cli("profile", str(path), "--model", str(tiny_model), "--engine", "onnx,native",
                   "--threads", "1", "--batch-size", "8", "--duration", "0.5",
                   "--power-cmd", f"{sys.executable} -c 'print(3.5)'",
                   "--json", str(js), "--plot", str(png))
    assert res.returncode == 0, res.stderr
    assert "onnx t1 b8" in res.stdout and "power: command" in res.stdout
    d = json.loads(js.read_text())
    _check_schema(d)
    onnx = d["results"][0]
    assert onnx["available"] and onnx["mean_watts"] == pytest.approx(3.5)
    native = d["results"][1]
    assert native["label"] == "native t1 b8"
    assert native["available"] or native["error"]  # built or reported, never a crash
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_profile_errors(tiny_model: Path, tmp_path: Path) -> None:
    res = _run_cli("profile", str(tmp_path / "missing.pod5"), "--model", str(tiny_model))
    assert res.returncode != 0 and "missing.pod5" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _run_cli("profile", "x.pod5", "--plot", "out.jpg")
    assert res.returncode == 1 and "give a FILE.png" in res.stderr
    res = _run_cli("profile", "x.pod5", "--threads", "1,two")
    assert res.returncode == 2 and "comma-separated integers" in res.stderr
    res = _run_cli("profile", str(tmp_path), "--power-cmd", "/nonexistent/meter",
                   "--model", str(tiny_model))
    assert res.returncode == 1 and "/nonexistent/meter: cannot run" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.realdata
@pytest.mark.slow
def test_short_real_profile(shared_data: Path, tiny_model: Path) -> None:
    """Profile real R9.4.1 reads (a bundled model if one exists, else the level model)."""
    from edgecall import models

    ecoli = shared_data / "r9.4.1" / "ecoli"
    bundled = [c for c in models.bundled() if c.pore == "r9.4.1"]
    model = bundled[0].folder if bundled else tiny_model
    rep = profiling.profile([ecoli], model=model, engines="onnx", threads=[1],
                            batch_sizes=[16], duration=1.0, max_reads=8, power=None)
    _check_schema(rep.to_dict())
    (r,) = rep.results
    assert r.available and r.reads >= 1 and r.samples > 10_000
    assert rep.inputs["sample_rates"] == [4000] and rep.inputs["reads"] == 8
    assert r.channels == pytest.approx(r.samples / 4000 / r.wall_s, rel=1e-3)
    assert np.isfinite(r.cpu_percent) and r.cpu_percent > 0


def test_bench_compare_runs(tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]],
                            tmp_path: Path) -> None:
    path, _ = coded_pod5
    js = tmp_path / "cmp.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), str(path),
                          "--model", str(tiny_model), "--engines", "onnx,nosuch",
                          "--chunks", "16", "--batch-size", "4", "--repeat", "1",
                          "--json", str(js)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(js.read_text())}
    assert rows["bare onnxruntime fp32"]["ratio"] == 1.0
    assert rows["edgecall onnx"]["max_abs_diff"] < 1e-5 and rows["edgecall onnx"]["ratio"] > 0
    assert "unknown engine" in rows["edgecall nosuch"]["error"]
    assert rows["edgecall pipeline (onnx, reads->bases)"]["samples_per_s"] > 0
    assert "x bare ort" in res.stdout


def test_incompatible_model_is_a_clear_error(coded_pod5: tuple[Path, dict[str, str]],
                                             tmp_path: Path) -> None:
    import modelkit

    r10 = modelkit.make_test_model(tmp_path / "r10", pore="r10.4.1", name="r10_model")
    with pytest.raises(EdgecallError, match="none of the 8 reads can be called with model "
                       "r10_model: .*r9.4.1.*r10.4.1"):
        profiling.profile([coded_pod5[0]], model=r10, engines="onnx", duration=0.1,
                          power=None)
