"""End-to-end tests of ``edgecall serve`` as real processes.

Files appearing over time (one copied in slowly), corrupt inputs, SIGTERM/SIGHUP,
and the localhost metrics endpoint. Crash recovery (kill -9) is in
``test_daemon_crash.py``.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import daemonkit as dk
import pytest


@pytest.fixture()
def dirs(tmp_path: Path) -> dict[str, Path]:
    """watch/output/state/log paths for one test."""
    d = {k: tmp_path / k for k in ("watch", "out", "state", "q", "stage")}
    d["watch"].mkdir()
    d["log"] = tmp_path / "daemon.log"
    return d


def _cmd(dirs: dict[str, Path], model: Path, *extra: str) -> list[str]:
    return dk.serve_cmd(dirs["watch"], dirs["out"], dirs["state"], model, *extra)


def test_files_appearing_over_time_each_called_once(dirs: dict[str, Path],
                                                    tiny_model: Path) -> None:
    expected: dict[str, set[str]] = {}
    expected.update(dk.make_inputs(dirs["watch"], {"run1/pod5_pass/a_0.pod5": 4}, seed=1))
    proc = dk.start(_cmd(dirs, tiny_model, "--settle", "0.8"), dirs["log"])
    try:
        dk.wait_for(lambda: dk.states(dirs["state"])["done"] == 1, 30, "first file done",
                    proc=proc, log=dirs["log"])
        # a file copied in slowly, with a pause longer than --settle half-way: it must be
        # retried (incomplete, no footer) and called only once it is complete
        src, ids = dk.staged_pod5(dirs["stage"], 6, seed=2)
        dst = dirs["watch"] / "run1/pod5_pass/b_1.pod5"
        dk.copy_slowly(src, dst, chunks=10, delay=0.1, pause_at=4, pause=1.3)
        expected["run1/pod5_pass/b_1.pod5"] = ids
        # files appearing in a new nested run folder, moved in complete
        later = dk.make_inputs(dirs["stage"] / "tree", {"exp/s1/run2/pod5/c_0.pod5": 3,
                                                        "exp/s1/run2/pod5_fail/c_0.pod5": 2},
                               seed=3)
        for rel, rids in later.items():
            (dirs["watch"] / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(dirs["stage"] / "tree" / rel, dirs["watch"] / rel)
            expected[rel] = rids
            time.sleep(0.3)
        dk.wait_for(lambda: dk.states(dirs["state"])["done"] == len(expected), 60,
                    "all files done", proc=proc, log=dirs["log"])
        assert dk.stop(proc) == 0
    finally:
        dk.stop(proc, signal.SIGKILL)
    rows = dk.journal(dirs["state"])
    assert {r for r, e in rows.items() if e["state"] == "done"} == set(expected)
    assert all(e["attempts"] == 1 for e in rows.values()), rows
    ids = dk.fastq_ids(dirs["out"])
    assert ids == {rid: 1 for rids in expected.values() for rid in rids}
    for rel, rids in expected.items():  # one output per input, mirroring its path
        out = dirs["out"] / Path(rel).with_suffix(".fastq")
        assert sum(1 for _ in out.open()) == 4 * len(rids)
        assert rows[rel]["reads"] == len(rids)
    assert "not readable yet" in dirs["log"].read_text()  # the paused copy was retried
    assert not dk.temp_files(dirs["out"])


def _corrupt_inputs(watch: Path, stage: Path) -> dict[str, str]:
    """Bad files of four kinds in ``watch``; rel -> expected words in the reason."""
    src, _ = dk.staged_pod5(stage, 5, seed=9)
    data = src.read_bytes()
    bad = watch / "run/pod5"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "truncated.pod5").write_bytes(data[: len(data) * 2 // 3])
    (bad / "empty.pod5").write_bytes(b"")
    (bad / "notes.pod5").write_text("this is not a pod5 file\n" * 20)
    middle = bytearray(data)
    for i in range(64, len(middle) - 64):
        middle[i] = (middle[i] * 7 + 13) & 0xFF
    (bad / "garbled.pod5").write_bytes(bytes(middle))
    return {"run/pod5/truncated.pod5": "truncated", "run/pod5/empty.pod5": "empty",
            "run/pod5/notes.pod5": "not a pod5", "run/pod5/garbled.pod5": "corrupt"}


def test_corrupt_files_quarantined_others_processed(dirs: dict[str, Path],
                                                    tiny_model: Path) -> None:
    good = dk.make_inputs(dirs["watch"], {"run/pod5/good_0.pod5": 3, "run/pod5/good_1.pod5": 4},
                          seed=4)
    bad = _corrupt_inputs(dirs["watch"], dirs["stage"])
    proc = dk.start(_cmd(dirs, tiny_model, "--once", "--quarantine", str(dirs["q"])),
                    dirs["log"])
    assert proc.wait(60) == 0, dirs["log"].read_text()
    rows = dk.journal(dirs["state"])
    for rel, words in bad.items():
        assert rows[rel]["state"] == "quarantined", rows[rel]
        assert words in rows[rel]["reason"] and rel.split("/")[-1] in rows[rel]["reason"]
        assert (dirs["q"] / rel).is_file()
        assert (dirs["q"] / (rel + ".reason.txt")).read_text().strip() == rows[rel]["reason"]
        assert (dirs["watch"] / rel).is_file()  # linked/copied, not moved
    assert all(rows[rel]["state"] == "done" for rel in good)
    assert dk.fastq_ids(dirs["out"]) == {rid: 1 for rids in good.values() for rid in rids}
    # a restart does not touch them again
    proc = dk.start(_cmd(dirs, tiny_model, "--once"), dirs["log"])
    assert proc.wait(60) == 0
    assert dk.journal(dirs["state"]) == rows


def test_sigterm_abandons_current_file_and_exits_zero(dirs: dict[str, Path],
                                                      tiny_model: Path) -> None:
    inputs = dk.make_inputs(dirs["watch"], {f"big_{i}.pod5": 40 for i in range(2)}, seed=5,
                            min_len=600, max_len=900)
    proc = dk.start(_cmd(dirs, tiny_model, "--batch-size", "1"), dirs["log"])
    try:
        dk.wait_for(lambda: dk.temp_files(dirs["out"]), 30, "a temp output (mid-file)",
                    interval=0.01, proc=proc, log=dirs["log"])
        t0 = time.monotonic()
        code = dk.stop(proc, signal.SIGTERM, timeout=10)
        took = time.monotonic() - t0
    finally:
        dk.stop(proc, signal.SIGKILL)
    assert code == 0 and took < 10, (code, took, dirs["log"].read_text()[-2000:])
    assert not dk.temp_files(dirs["out"])
    rows = dk.journal(dirs["state"])
    assert "running" not in {e["state"] for e in rows.values()}
    assert any("SIGTERM" in (e["reason"] or "") for e in rows.values()), rows
    proc = dk.start(_cmd(dirs, tiny_model, "--once"), dirs["log"])
    assert proc.wait(120) == 0
    assert dk.fastq_ids(dirs["out"]) == {rid: 1 for rids in inputs.values() for rid in rids}


def test_sighup_rescans_and_sigint_exits_zero(dirs: dict[str, Path], tiny_model: Path) -> None:
    cmd = _cmd(dirs, tiny_model, "--poll-interval", "600", "--settle", "0.2")
    proc = dk.start(cmd, dirs["log"])
    try:
        dk.started(proc, dirs["log"])
        inputs = dk.make_inputs(dirs["watch"], {"late.pod5": 3}, seed=6)
        for _ in range(2):  # two scans --settle apart make the file eligible
            time.sleep(0.3)
            proc.send_signal(signal.SIGHUP)
        dk.wait_for(lambda: dk.states(dirs["state"])["done"] == 1, 20, "file called after HUP",
                    proc=proc, log=dirs["log"])
        assert dk.stop(proc, signal.SIGINT) == 0
    finally:
        dk.stop(proc, signal.SIGKILL)
    assert dk.fastq_ids(dirs["out"]) == dict.fromkeys(inputs["late.pod5"], 1)


def test_metrics_and_status_on_localhost(dirs: dict[str, Path], tiny_model: Path) -> None:
    inputs = dk.make_inputs(dirs["watch"], {"m/a.pod5": 3, "m/b.pod5": 2}, seed=7)
    (dirs["watch"] / "m" / "junk.pod5").write_text("junk")
    proc = dk.start(_cmd(dirs, tiny_model, "--metrics-addr", "127.0.0.1:0"), dirs["log"])
    try:
        url = dk.wait_for(lambda: (dirs["state"] / "metrics.url").exists()
                          and (dirs["state"] / "metrics.url").read_text().strip(), 30,
                          "metrics.url", proc=proc, log=dirs["log"])
        assert url.startswith("http://127.0.0.1:")
        dk.wait_for(lambda: dk.status_json(url)["files"]["done"] == 2
                    and dk.status_json(url)["files"]["quarantined"] == 1, 30,
                    "status shows the work", proc=proc, log=dirs["log"])
        code, ctype, body = dk.http_get(url + "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        m = dk.parse_prometheus(body)
        assert m["edgecall_files_done"] == 2 and m["edgecall_files_failed"] == 1
        assert m["edgecall_reads_total"] == 5 and m["edgecall_bases_total"] > 0
        assert m["edgecall_samples_total"] > m["edgecall_bases_total"]
        assert m["edgecall_process_resident_memory_bytes"] > 10e6
        assert "edgecall_process_cpu_percent" in m and m["edgecall_ready"] == 1
        assert m["edgecall_engine_chunks_total"] >= 5 and m["edgecall_batch_seconds_max"] > 0
        assert any(k.startswith("edgecall_info{") and 'model="test_level_model"' in k for k in m)
        st = dk.status_json(url)
        assert st["model"] == "test_level_model" and st["session"]["reads"] == 5
        assert st["process"]["rss_bytes"] > 10e6 and "power_watts" in st["process"]
        assert dk.http_get(url + "/nope")[0] == 404
        assert dk.http_get(url + "/healthz")[0] == 200
        assert dk.stop(proc) == 0
    finally:
        dk.stop(proc, signal.SIGKILL)
    lines = (dirs["state"] / "telemetry.jsonl").read_text().splitlines()
    events = [json.loads(x)["event"] for x in lines]
    assert events[0] == "start" and events[-1] == "stop" and events.count("file") == 2
    assert sum(len(v) for v in inputs.values()) == 5


def test_refuses_non_loopback_metrics_and_second_instance(dirs: dict[str, Path],
                                                          tiny_model: Path) -> None:
    proc = dk.start(_cmd(dirs, tiny_model, "--metrics-addr", "0.0.0.0:9464"), dirs["log"])
    assert proc.wait(30) == 1
    assert "loopback only" in dirs["log"].read_text()
    first = dk.start(_cmd(dirs, tiny_model), dirs["log"])
    try:
        dk.started(first, dirs["log"])
        second = dk.start(_cmd(dirs, tiny_model), dirs["log"])
        assert second.wait(30) == 1
        assert "already using this state folder" in dirs["log"].read_text()
        assert first.poll() is None
    finally:
        assert dk.stop(first) == 0


def test_stop_flag_is_noticed_while_idle(dirs: dict[str, Path], tiny_model: Path) -> None:
    """SIGTERM while sleeping between long polls still exits at once."""
    proc = dk.start(_cmd(dirs, tiny_model, "--poll-interval", "600"), dirs["log"])
    try:
        dk.started(proc, dirs["log"])
        time.sleep(0.3)
        t0 = time.monotonic()
        code = dk.stop(proc, signal.SIGTERM, timeout=5)
        took = time.monotonic() - t0
    finally:
        dk.stop(proc, signal.SIGKILL)
    assert code == 0 and took < 3, (code, took)


def _rss_mb(pid: int) -> float:
    """VmRSS of a live process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_memory_stays_flat_over_many_files(dirs: dict[str, Path], tiny_model: Path) -> None:
    n = 36
    proc = dk.start(_cmd(dirs, tiny_model, "--settle", "0.1"), dirs["log"])
    try:
        dk.started(proc, dirs["log"])
        rss: dict[int, float] = {}
        for i in range(n):  # files keep arriving while earlier ones are called
            dk.make_inputs(dirs["stage"], {f"f_{i:03d}.pod5": 4}, seed=100 + i)
            shutil.move(dirs["stage"] / f"f_{i:03d}.pod5", dirs["watch"] / f"f_{i:03d}.pod5")
            if i in (n // 3, n - 1):
                dk.wait_for(lambda k=i: dk.states(dirs["state"])["done"] == k + 1, 60,
                            f"{i + 1} files done", proc=proc, log=dirs["log"])
                rss[i] = _rss_mb(proc.pid)
        assert dk.stop(proc) == 0
    finally:
        dk.stop(proc, signal.SIGKILL)
    warm, end = rss[n // 3], rss[n - 1]
    print(f"\ndaemon RSS after {n // 3 + 1} files {warm:.1f} MiB, after {n} files {end:.1f} MiB")
    assert end - warm < 8.0, rss
    assert len(dk.fastq_ids(dirs["out"])) == 4 * n


def test_configured_from_environment_only(dirs: dict[str, Path], tiny_model: Path) -> None:
    """The systemd unit passes everything as EDGECALL_* (EnvironmentFile)."""
    inputs = dk.make_inputs(dirs["watch"], {"env/a.pod5": 2}, seed=13)
    env = {"EDGECALL_WATCH": str(dirs["watch"]), "EDGECALL_OUTPUT": str(dirs["out"]),
           "EDGECALL_STATE": str(dirs["state"]), "EDGECALL_MODEL": str(tiny_model),
           "EDGECALL_THREADS": "1", "EDGECALL_POLL_INTERVAL": "0.1", "EDGECALL_SETTLE": "0.2",
           "EDGECALL_METRICS_ADDR": "off", "EDGECALL_FORMAT": "sam", "EDGECALL_ARGS": ""}
    proc = dk.start([sys.executable, "-m", "edgecall", "serve", "--once"], dirs["log"], env=env)
    assert proc.wait(60) == 0, dirs["log"].read_text()[-2000:]
    sam = (dirs["out"] / "env" / "a.sam").read_text().splitlines()
    names = {line.split("\t")[0] for line in sam if not line.startswith("@")}
    assert names == inputs["env/a.pod5"]
    assert dk.journal(dirs["state"])["env/a.pod5"]["state"] == "done"
