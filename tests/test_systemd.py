"""systemd integration: the sd_notify client against real sockets, the daemon's
notification sequence, the watchdog contract, and the unit file.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import daemonkit as dk
import pytest

from edgecall.daemon.service import ServeConfig, Service
from edgecall.daemon.systemd import Notifier, watchdog_interval
from edgecall.types import CalledRead, Failed, Read

UNIT = dk.ROOT / "systemd" / "edgecall.service"


class Listener:
    """A bound AF_UNIX datagram socket collecting notifications on a thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.address = address
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> list[tuple[float, str]]:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.messages


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    addr = (str(tmp_path / "notify.sock") if request.param == "path"
            else f"@edgecall-test-{uuid.uuid4().hex}")
    lst = Listener(addr)
    yield lst
    lst.close()


def test_notifier_sends_in_order(listener: Listener) -> None:
    n = Notifier({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_timeout == 2.0
    assert n.ready("loaded model x")
    assert n.status("calling a.pod5\n(3 reads)")
    assert n.watchdog() and not n.ping_due() and not n.keepalive()
    assert n.stopping()
    n.close()
    got = [m for _, m in listener.close()]
    assert got == ["READY=1\nSTATUS=loaded model x", "STATUS=calling a.pod5 (3 reads)",
                   "WATCHDOG=1", "STOPPING=1"]


def test_notifier_is_a_noop_without_systemd(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready() and not n.watchdog() and not n.ping_due()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert gone.enabled and not gone.ready()  # a dead socket is logged, never raised
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_watchdog_interval_follows_sd_watchdog_enabled() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "500000"}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, pid=7) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "zero"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_daemon_notifications_ready_before_watchdog(listener: Listener, tmp_path: Path,
                                                   tiny_model: Path) -> None:
    watch, out, state, log = (tmp_path / n for n in ("watch", "out", "state", "daemon.log"))
    dk.make_inputs(watch, {"a.pod5": 3, "b.pod5": 3}, seed=11)
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "300000"}
    proc = dk.start(dk.serve_cmd(watch, out, state, tiny_model, "--once"), log, env=env)
    assert proc.wait(60) == 0, log.read_text()[-2000:]
    got = [m for _, m in listener.close()]
    first = lambda key: next(i for i, m in enumerate(got) if key in m.split("\n"))  # noqa: E731
    assert got[0].startswith("READY=1"), got[:3]
    assert first("READY=1") < first("WATCHDOG=1")
    assert sum(m == "WATCHDOG=1" for m in got) >= 2
    assert any(m.startswith("STATUS=") and "done" in m for m in got)
    assert got[-1].startswith("STOPPING=1") and sum("STOPPING=1" in m for m in got) == 1
    assert all("READY=1" not in m for m in got[1:])


class _Stats:
    chunks = 0


class _StuckCaller:
    """Stand-in basecaller that spends ``hang`` s on its first read.

    With ``progress`` its engine keeps counting chunks meanwhile (a very long
    read); without, it is hung.
    """

    def __init__(self, hang: float, progress: bool = False) -> None:
        self.hang = hang
        self.progress = progress
        self.hung = threading.Event()
        self.stats = _Stats()

    def call(self, reads: Iterable[Read | Failed]) -> Iterator[CalledRead | Failed]:
        for item in reads:
            if isinstance(item, Failed):
                yield item
                continue
            if not self.hung.is_set():
                self.hung.set()
                end = time.monotonic() + self.hang
                while time.monotonic() < end:
                    time.sleep(0.02)
                    self.stats.chunks += self.progress
            yield CalledRead(read_id=item.read_id, sequence="ACGT", quality="IIII",
                             moves=__import__("numpy").zeros(4, "uint8"), stride=4,
                             num_samples=item.num_samples, trimmed_samples=0,
                             mean_qscore=40.0, sample_rate=item.sample_rate)


def _pings_around_a_slow_read(tmp_path: Path, caller: _StuckCaller) -> list[float]:
    """Run the service over one file with ``caller``; return the WATCHDOG=1 times."""
    sock_path = str(tmp_path / "wd.sock")
    lst = Listener(sock_path)
    watch = tmp_path / "watch"
    dk.make_inputs(watch, {"a.pod5": 3}, seed=12)
    cfg = ServeConfig(watch=watch, output=tmp_path / "out", state=tmp_path / "state",
                      model="stub", metrics_addr="off", poll_interval=0.05, settle=0.1)
    svc = Service(cfg, loader=lambda c, p: (caller, "stub"),
                  notifier=Notifier({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"}))
    runner = threading.Thread(target=svc.run)
    runner.start()
    try:
        time.sleep(0.5)  # idle but looping: pings
        dk.wait_for(lambda: dk.states(cfg.state)["done"] == 1, 20, "file done")
        time.sleep(0.5)  # pings again after the hang
    finally:
        svc.request_stop("test over")
        runner.join(10)
    msgs = lst.close()
    assert caller.hung.is_set() and not runner.is_alive()
    assert dk.states(cfg.state)["done"] == 1
    return [t for t, m in msgs if m == "WATCHDOG=1"]


def test_watchdog_pings_stop_while_the_engine_hangs(tmp_path: Path) -> None:
    pings = _pings_around_a_slow_read(tmp_path, _StuckCaller(hang=1.5))
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 6
    assert max(gaps) >= 1.2, gaps  # silent while stuck: systemd would restart us
    assert sorted(gaps)[len(gaps) // 2] < 0.3  # ~every 0.1 s otherwise


def test_watchdog_pings_continue_while_the_engine_progresses(tmp_path: Path) -> None:
    """A very long read: no read comes out for a while, but chunks keep being run."""
    pings = _pings_around_a_slow_read(tmp_path, _StuckCaller(hang=1.5, progress=True))
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 10 and max(gaps) < 0.5, gaps


needs_analyze = pytest.mark.skipif(dk.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed")


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this interpreter (verify checks the binary)."""
    text = UNIT.read_text()
    text = re.sub(r"^ExecStart=\S+ serve", f"ExecStart={sys.executable} -m edgecall serve",
                  text, flags=re.M)
    path = tmp_path / "edgecall.service"
    path.write_text(text)
    return path


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", str(_unit_for_here(tmp_path))],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0 and "edgecall.service" not in res.stderr, res.stderr


@needs_analyze
def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true",
                          str(_unit_for_here(tmp_path))],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    if res.returncode != 0 or score is None:
        pytest.skip(f"systemd-analyze security --offline not supported here: {res.stderr[:200]}")
    assert float(score.group(1)) <= 2.0, res.stdout[-3000:]


def test_unit_has_the_required_settings() -> None:
    text = UNIT.read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.M))
    assert keys["Type"] == "notify" and keys["Restart"] == "on-failure"
    assert keys["User"] == "edgecall" and keys["EnvironmentFile"].endswith("edgecall.env")
    assert int(keys["WatchdogSec"]) > 0 and "MemoryMax" in keys and "CPUQuota" in keys
    assert keys["ProtectSystem"] == "strict" and keys["NoNewPrivileges"] == "yes"
    assert keys["PrivateTmp"] == "yes" and keys["ProtectHome"] in ("yes", "read-only")
    assert keys["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "ReadWritePaths" in keys and "Nice" in keys and "IOSchedulingClass" in keys
    env = (dk.ROOT / "systemd" / "edgecall.env").read_text()
    for opt in ("WATCH", "OUTPUT", "STATE", "MODEL", "METRICS_ADDR", "SETTLE"):
        assert re.search(rf"^#?EDGECALL_{opt}=", env, flags=re.M), opt


def test_env_file_options_reach_the_cli(tmp_path: Path) -> None:
    """Every EDGECALL_* in the example env file is an option `edgecall serve` reads."""
    import argparse

    from edgecall.cli import serve

    env = (dk.ROOT / "systemd" / "edgecall.env").read_text()
    names = re.findall(r"^#?EDGECALL_(\w+)=", env, flags=re.M)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    dests = {a.dest.upper() for a in parser._actions} | {"FORMAT", "ARGS"}
    assert set(names) - dests == set()
    assert {"ARGS"} < set(names)


def test_install_script_is_valid_sh() -> None:
    script = dk.ROOT / "systemd" / "install.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
