"""The daemon under hostile file-system conditions (issue 21): odd names, files renamed,
replaced, truncated or rewritten while or after they are basecalled, case collisions.

In-process :class:`Service` runs with a stand-in basecaller that calls every read
"ACGT" (``EchoCaller``), so each test checks exactly which reads reached which output.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import daemonkit as dk
import pytest
from test_daemon_service import EchoCaller, _config, _service

from edgecall.daemon import files
from edgecall.daemon.journal import Journal, journal_path
from edgecall.daemon.service import Service
from edgecall.daemon.systemd import Notifier
from edgecall.io.reader import iter_reads
from edgecall.types import Failed, Read


def _outputs(out: Path) -> dict[str, int]:
    """Final FASTQ outputs under ``out`` (relative name -> records)."""
    return {p.relative_to(out).as_posix(): sum(1 for _ in p.open()) // 4
            for p in sorted(out.rglob("*.fastq")) if not p.name.startswith(".")}


def test_non_utf8_file_name_is_called_and_journalled(tmp_path: Path) -> None:
    """Defect 1: a name that is not UTF-8 made every start exit 1 (UnicodeEncodeError)."""
    cfg = _config(tmp_path)
    name = os.fsdecode(b"run\xff.pod5")
    ids = dk.make_inputs(cfg.watch, {"tmp.pod5": 3, "ok.pod5": 2})
    os.rename(cfg.watch / "tmp.pod5", cfg.watch / name)  # pod5 itself cannot open it
    ids[name] = ids.pop("tmp.pod5")
    _service(cfg, EchoCaller()).run()
    assert os.path.exists(os.fsencode(cfg.output) + b"/run\xff.fastq")
    assert set(dk.fastq_ids(cfg.output)) == ids[name] | ids["ok.pod5"]
    con = sqlite3.connect(journal_path(cfg.state))
    stored = {r[0]: r[1] for r in con.execute("SELECT path, state FROM files")}
    con.close()
    assert stored == {b"run\xff.pod5": "done", "ok.pod5": "done"}  # raw bytes kept
    _service(cfg, EchoCaller()).run()  # a restart neither fails nor redoes it
    with Journal(journal_path(cfg.state)) as j:
        assert [(e.path, e.state, e.attempts) for e in j.entries()
                if e.path == name] == [(name, "done", 1)]


def test_non_utf8_corrupt_file_is_quarantined_with_printable_reason(tmp_path: Path) -> None:
    cfg = _config(tmp_path, quarantine=tmp_path / "q")
    cfg.watch.mkdir(parents=True)
    bad = os.fsencode(cfg.watch) + b"/bad\xfe.pod5"
    with open(bad, "wb") as fh:
        fh.write(b"junk, not a pod5 file")
    _service(cfg, EchoCaller()).run()
    with Journal(journal_path(cfg.state)) as j:
        (entry,) = list(j.entries())
    assert entry.state == "quarantined" and entry.path == os.fsdecode(b"bad\xfe.pod5")
    assert "bad\\xfe.pod5: not a pod5 file (bad signature)" in entry.reason
    assert os.path.exists(os.fsencode(tmp_path) + b"/q/bad\xfe.pod5.reason.txt")


def test_done_file_renamed_or_moved_is_not_called_again(tmp_path: Path) -> None:
    """Defect 6: the journal was keyed by path, so a renamed done file was called twice."""
    cfg = _config(tmp_path)
    ids = dk.make_inputs(cfg.watch, {"run/a.pod5": 3})
    _service(cfg, EchoCaller()).run()
    (cfg.watch / "archive").mkdir()
    os.rename(cfg.watch / "run/a.pod5", cfg.watch / "archive/a_renamed.pod5")
    _service(cfg, EchoCaller()).run()
    assert _outputs(cfg.output) == {"run/a.fastq": 3}
    assert dict(dk.fastq_ids(cfg.output)) == dict.fromkeys(ids["run/a.pod5"], 1)
    assert dk.states(cfg.state) == {"done": 1}


def test_file_replaced_in_place_is_called_into_its_own_output(tmp_path: Path) -> None:
    """New content at a done file's path is basecalled; the first output is kept."""
    cfg = _config(tmp_path)
    first = dk.make_inputs(cfg.watch, {"a.pod5": 3}, seed=1)["a.pod5"]
    _service(cfg, EchoCaller()).run()
    src, second = dk.staged_pod5(tmp_path / "stage", 4, seed=9)
    os.replace(src, cfg.watch / "a.pod5")
    _service(cfg, EchoCaller()).run()
    assert _outputs(cfg.output) == {"a.fastq": 3, "a_2.fastq": 4}
    assert dict(dk.fastq_ids(cfg.output)) == dict.fromkeys(first | second, 1)


def test_case_insensitive_name_collision_keeps_both_files(tmp_path: Path) -> None:
    """``x.pod5`` and ``x.POD5`` wrote the same output: one file's reads were lost."""
    cfg = _config(tmp_path)
    ids = dk.make_inputs(cfg.watch, {"x.pod5": 2, "x.POD5": 3})
    _service(cfg, EchoCaller()).run()
    outs = _outputs(cfg.output)
    assert sorted(outs.values()) == [2, 3] and len({o.casefold() for o in outs}) == 2
    assert dict(dk.fastq_ids(cfg.output)) == dict.fromkeys(ids["x.pod5"] | ids["x.POD5"], 1)
    assert dk.states(cfg.state) == {"done": 2}


def test_input_truncated_while_called_is_read_from_a_private_copy(tmp_path: Path) -> None:
    """Truncating the input under pod5's memory map killed the daemon with SIGBUS."""
    cfg = _config(tmp_path)
    ids = dk.make_inputs(cfg.watch, {"a.pod5": 6}, min_len=300, max_len=400)
    src = cfg.watch / "a.pod5"

    def reads(path: Path) -> Iterator[Read | Failed]:
        for i, item in enumerate(iter_reads([path])):
            if i == 1:  # MinKNOW (or a user) truncates the file half-way through the call
                os.truncate(src, 100)
            yield item

    _service(cfg, EchoCaller(), reads=reads).run()
    assert dict(dk.fastq_ids(cfg.output)) == dict.fromkeys(ids["a.pod5"], 1)
    # the call finished from the copy; the truncated file is new content at that path
    with Journal(journal_path(cfg.state)) as j:
        rows = [(e.state, e.reason) for e in j.entries()]
    assert rows[0] == ("done", None) and rows[1][0] == "quarantined", rows
    assert "a.pod5: truncated or incomplete" in str(rows[1][1])
    assert not list((cfg.state / "snapshots").iterdir())


def test_input_replaced_by_rename_during_its_call_is_called_too(tmp_path: Path) -> None:
    """An input replaced by rename while it was called was never basecalled."""
    cfg = _config(tmp_path)
    first = dk.make_inputs(cfg.watch, {"a.pod5": 3}, seed=1)["a.pod5"]
    staged, second = dk.staged_pod5(tmp_path / "stage", 2, seed=7)
    swapped: list[bool] = []

    def reads(path: Path) -> Iterator[Read | Failed]:
        if not swapped:
            swapped.append(True)
            os.replace(staged, cfg.watch / "a.pod5")
        yield from iter_reads([path])

    _service(cfg, EchoCaller(), reads=reads).run()
    assert dict(dk.fastq_ids(cfg.output)) == dict.fromkeys(first | second, 1)
    assert _outputs(cfg.output) == {"a.fastq": 3, "a_2.fastq": 2}


def test_snapshot_refuses_a_file_that_changed(tmp_path: Path) -> None:
    src = tmp_path / "a.pod5"
    src.write_bytes(b"x" * 1000)
    ident = files.identify(src)
    with open(src, "r+b") as fh:  # rewritten in place: same size, new content and mtime
        fh.write(b"y")
    os.utime(src, ns=(ident.mtime_ns + 10**9, ident.mtime_ns + 10**9))
    with pytest.raises(files.Changed, match="a.pod5: changed"):
        files.snapshot(src, tmp_path / "copy.pod5", ident)
    assert not (tmp_path / "copy.pod5").exists()
    files.snapshot(src, tmp_path / "copy.pod5", files.identify(src))
    assert (tmp_path / "copy.pod5").read_bytes() == src.read_bytes()


def test_very_long_name_gets_a_shortened_output(tmp_path: Path) -> None:
    """A 250-byte input name made the temp output name too long and blamed the input."""
    cfg = _config(tmp_path)
    rel = "r" * 245 + ".pod5"
    ids = dk.make_inputs(cfg.watch, {rel: 2})
    _service(cfg, EchoCaller()).run()
    (out,) = _outputs(cfg.output)
    assert len(out.encode()) + 32 <= 255 and out.endswith(".fastq")
    assert set(dk.fastq_ids(cfg.output)) == ids[rel]


def test_version1_journal_is_migrated_without_redoing_done_files(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    ids = dk.make_inputs(cfg.watch, {"a.pod5": 2, "b.pod5": 2})
    st = (cfg.watch / "a.pod5").stat()
    cfg.state.mkdir()
    con = sqlite3.connect(journal_path(cfg.state))
    con.executescript(_V1_SCHEMA)
    con.execute("INSERT INTO files (path, state, size, mtime_ns, output, reads, first_seen) "
                "VALUES ('a.pod5', 'done', ?, ?, 'a.fastq', 2, 1.0)", (st.st_size, st.st_mtime_ns))
    con.commit()
    con.close()
    (cfg.output).mkdir()
    (cfg.output / "a.fastq").write_text("")  # what the old daemon wrote
    _service(cfg, EchoCaller()).run()
    rows = dk.journal(cfg.state)
    assert rows["a.pod5"]["key"] == "path:a.pod5" and rows["a.pod5"]["attempts"] == 0
    assert rows["b.pod5"]["state"] == "done"
    assert set(dk.fastq_ids(cfg.output)) == ids["b.pod5"]


_V1_SCHEMA = """
CREATE TABLE files (path TEXT PRIMARY KEY, state TEXT NOT NULL, size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0, expected_reads INTEGER,
    reads INTEGER NOT NULL DEFAULT 0, failed_reads INTEGER NOT NULL DEFAULT 0,
    bases INTEGER NOT NULL DEFAULT 0, samples INTEGER NOT NULL DEFAULT 0, output TEXT,
    reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, crashes INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL, started REAL, finished REAL, seconds REAL);
CREATE INDEX files_state ON files (state, first_seen);
"""


def test_file_of_another_chemistry_is_quarantined_with_reason(tmp_path: Path,
                                                              tiny_model: Path) -> None:
    """Defect 5 (daemon): a valid R10 file was marked done with 0 reads and an empty output."""
    import modelkit

    cfg = _config(tmp_path, model=str(tiny_model), threads=1)
    ids = dk.make_inputs(cfg.watch, {"r9.pod5": 2})
    modelkit.make_coded_pod5(cfg.watch / "r10.pod5", 2, seed=4, flow_cell="FLO-MIN114")
    svc = Service(cfg, notifier=Notifier({}))  # the real basecaller with the level model
    svc.run()
    rows = dk.journal(cfg.state)
    assert rows["r10.pod5"]["state"] == "quarantined"
    assert rows["r10.pod5"]["reason"].startswith(f"{cfg.watch / 'r10.pod5'}: read ")
    assert "is r10.4.1" in rows["r10.pod5"]["reason"]
    assert rows["r9.pod5"]["state"] == "done" and rows["r9.pod5"]["reads"] == 2
    assert _outputs(cfg.output) == {"r9.fastq": 2}
    assert set(dk.fastq_ids(cfg.output)) == ids["r9.pod5"]
    assert svc.status()["files"]["quarantined"] == 1


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs the right to mount; skipped otherwise)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_state_disk_is_waited_out_not_fatal(tmp_path: Path, small_disk: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Defect 7: a full state disk stopped the daemon with 'database or disk is full'."""
    import threading

    cfg = _config(tmp_path, state=small_disk / "state", once=False)
    cfg.watch.mkdir()
    svc = _service(cfg, EchoCaller())
    svc._backoff_seconds = 0.05
    errors: list[BaseException] = []

    def run() -> None:
        try:
            svc.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        dk.wait_for(lambda: svc.status()["ready"] or errors, 30, "start-up")
        filler = small_disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the state disk up
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        ids = dk.make_inputs(cfg.watch, {"a.pod5": 2})
        dk.wait_for(lambda: errors or any("cannot update the journal: database or disk is "
                                          "full" in r.getMessage() for r in caplog.records),
                    30, "the daemon to meet the full disk")
        filler.unlink()  # space again: the daemon carries on by itself
        dk.wait_for(lambda: errors or dk.states(cfg.state)["done"] == 1, 30, "the file done")
    finally:
        svc.request_stop()
        thread.join(30)
    assert not errors, errors
    assert dict(dk.fastq_ids(cfg.output)) == dict.fromkeys(ids["a.pod5"], 1)


def test_shipped_service_settings_run_the_default_model_fast() -> None:
    """Defect 11: the shipped env file ran the FP32 student on onnxruntime FP32."""
    import argparse

    from edgecall.cli import serve as serve_cli

    root = Path(__file__).resolve().parents[1]
    env = dict(line.split("=", 1) for line in (root / "systemd/edgecall.env").read_text()
               .splitlines() if line and not line.startswith("#"))
    assert env["EDGECALL_ENGINE"] == "auto" and env["EDGECALL_VARIANT"] == "main"
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--watch", "w", "--output", "o"])
    assert args.variant == "main"
    text = (root / "docs/daemon.md").read_text()
    from edgecall import models

    names = {c.name for c in models.bundled()}
    for model in re_models(text):
        assert model in names, f"docs/daemon.md names a model that does not exist: {model}"


def re_models(text: str) -> list[str]:
    """Model names given with --model in a text."""
    import re

    return re.findall(r"--model ([a-z0-9_]+)", text)


def test_metrics_server_caps_and_times_out_idle_connections() -> None:
    """Defect 9: 300 idle local connections held 300 threads and fds; no timeout."""
    import socket
    import threading

    from edgecall.daemon.http import MetricsServer

    server = MetricsServer("127.0.0.1", 0, lambda: {"up": True, "ready": True},
                           timeout=0.5, max_connections=4).start()
    host, port = server.address
    base_threads = threading.active_count()
    idle = [socket.create_connection((host, port)) for _ in range(40)]
    try:
        peak = 0
        for sock in idle:  # every idle client is hung up on: refused, or timed out
            sock.settimeout(20)
            peak = max(peak, threading.active_count() - base_threads)
            assert sock.recv(1) == b""
        assert peak <= 4
        code, _, body = dk.http_get(server.url + "/metrics")
        assert code == 200 and "edgecall_up 1" in body
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_telemetry_sampler_survives_running_out_of_file_descriptors(tmp_path: Path) -> None:
    """Defect 9: the sampler thread died on its first OSError; /metrics froze its RSS."""
    import subprocess
    import sys

    code = """
import os, resource, time
from edgecall.telemetry import Sampler
s = Sampler(interval=0.01).start()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
fds = []
try:
    while True:
        fds.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
time.sleep(0.2)   # samples fail meanwhile (EMFILE opening /proc)
for fd in fds:
    os.close(fd)
n = len(s._s.rss)
while len(s._s.rss) == n and s._thread.is_alive():
    time.sleep(0.01)   # sampling resumes once descriptors are free
print("alive" if s._thread.is_alive() else "dead")
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.stdout.strip() == "alive", r.stderr[-2000:]


def test_newline_in_a_file_name_cannot_forge_log_lines(tmp_path: Path) -> None:
    """Defect 12 (part): a watched file named 'x\\nERROR ...' forged a log line."""
    import io
    import logging

    from edgecall.daemon.service import OneLineLogs

    cfg = _config(tmp_path)
    cfg.watch.mkdir(parents=True)
    evil = "bad\n2026-12-03 ERROR edgecall: forged.pod5"
    (cfg.watch / evil).write_bytes(b"not a pod5 file")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OneLineLogs())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO
    try:
        _service(cfg, EchoCaller()).run()
    finally:
        root.removeHandler(handler)
        root.level = old_level
    lines = stream.getvalue().splitlines()
    assert not [ln for ln in lines if ln.startswith("2026-12-03 ERROR")], lines
    assert any("bad\\n2026-12-03 ERROR edgecall: forged.pod5" in ln for ln in lines), lines
    with Journal(journal_path(cfg.state)) as j:
        (entry,) = list(j.entries())
    assert entry.state == "quarantined" and "\n" not in entry.reason
