"""Tests for the localhost metrics endpoint: address policy, exposition format, server."""

from __future__ import annotations

import json

import daemonkit as dk
import pytest

from edgecall.daemon.http import MetricsServer, ProcessProbe, parse_addr, render_metrics
from edgecall.errors import EdgecallError

STATUS = {"version": "0.1.0", "model": 'm"1', "engine": "onnx", "state": "idle", "up": True,
          "ready": True, "uptime_s": 1.5,
          "files": {"done": 3, "queued": 1, "running": 0, "quarantined": 2, "waiting": 4},
          "session": {"files": 3, "reads": 10, "failed_reads": 1, "bases": 900, "samples": 9000},
          "rate": {"samples_per_s": 1234.5, "bases_per_s": 12.0},
          "journal": {"reads": 10, "bases": 900},
          "process": {"rss_bytes": 123, "peak_rss_bytes": 456, "cpu_percent": 50.0,
                      "power_watts": None, "energy_joules": None, "power_source": None}}


def test_parse_addr_allows_loopback_only() -> None:
    assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_addr("[::1]:0") == ("::1", 0)
    assert parse_addr("localhost:80") == ("localhost", 80)
    assert parse_addr(":9000") == ("127.0.0.1", 9000)
    assert parse_addr("off") is None and parse_addr("") is None
    for bad in ("0.0.0.0:9464", "192.168.1.5:9464", "example.org:80", "127.0.0.1", "x:y"):
        with pytest.raises(EdgecallError):
            parse_addr(bad)


def test_render_metrics_is_valid_exposition() -> None:
    text = render_metrics(STATUS)
    samples = dk.parse_prometheus(text)
    assert samples["edgecall_files_done"] == 3 and samples["edgecall_files_failed"] == 2
    assert samples["edgecall_files_waiting"] == 4 and samples["edgecall_reads_total"] == 10
    assert samples["edgecall_samples_per_second"] == 1234.5 and samples["edgecall_up"] == 1
    assert "edgecall_power_watts" not in samples  # no sensor: absent, never a made-up 0
    assert 'model="m\\"1"' in text
    with_power = {**STATUS, "process": {**STATUS["process"], "power_watts": 4.5,
                                        "energy_joules": 10.0, "power_source": "hwmon:ina219"}}
    samples = dk.parse_prometheus(render_metrics(with_power))
    assert samples["edgecall_power_watts"] == 4.5
    assert samples['edgecall_power_source_info{source="hwmon:ina219"}'] == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_server_answers_metrics_and_status(host: str) -> None:
    try:
        srv = MetricsServer(host, 0, lambda: STATUS).start()
    except OSError as exc:
        pytest.skip(f"{host} not available here: {exc}")
    try:
        code, ctype, body = dk.http_get(srv.url + "/metrics")
        assert code == 200 and "version=0.0.4" in ctype
        assert dk.parse_prometheus(body)["edgecall_bases_total"] == 900
        assert dk.status_json(srv.url)["files"]["quarantined"] == 2
        assert dk.http_get(srv.url + "/other")[0] == 404
    finally:
        srv.stop()


def test_server_survives_a_failing_status_callback() -> None:
    def boom() -> dict:
        raise RuntimeError("broken")

    srv = MetricsServer("127.0.0.1", 0, boom).start()
    try:
        assert dk.http_get(srv.url + "/metrics")[0] == 500
        assert dk.http_get(srv.url + "/metrics")[0] == 500  # still serving
    finally:
        srv.stop()


def test_process_probe_reports_rss_and_cpu() -> None:
    probe = ProcessProbe()
    probe.start(sample_interval=0.05)
    try:
        snap = probe.snapshot()
    finally:
        probe.close()
    assert snap["rss_bytes"] > 1e6 and snap["peak_rss_bytes"] >= snap["rss_bytes"]
    assert {"cpu_percent", "power_watts", "energy_joules", "power_source"} <= set(snap)
    json.dumps(snap)
