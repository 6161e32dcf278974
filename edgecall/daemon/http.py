"""Localhost-only HTTP endpoints: Prometheus ``/metrics`` and ``/status`` JSON.

A stdlib :class:`http.server.ThreadingHTTPServer` on a daemon thread. It only
reads a status dictionary the service publishes (under a lock) plus process
figures from :mod:`edgecall.telemetry`; it never touches the journal or the
pipeline, so a slow scraper cannot slow basecalling down. Binding to anything
but a loopback address is refused: the endpoints have no authentication.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgecall.errors import EdgecallError

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]

# (metric name, type, help, path into the status dict)
_METRICS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("edgecall_up", "gauge", "1 while the daemon is running", ("up",)),
    ("edgecall_ready", "gauge", "1 once the model is loaded", ("ready",)),
    ("edgecall_uptime_seconds", "gauge", "Seconds since the daemon started", ("uptime_s",)),
    ("edgecall_files_done", "gauge", "Input files basecalled (journal)", ("files", "done")),
    ("edgecall_files_queued", "gauge", "Complete input files waiting to be basecalled",
     ("files", "queued")),
    ("edgecall_files_running", "gauge", "Input files being basecalled", ("files", "running")),
    ("edgecall_files_failed", "gauge", "Input files quarantined as corrupt (journal)",
     ("files", "quarantined")),
    ("edgecall_files_waiting", "gauge", "Input files seen but not yet complete",
     ("files", "waiting")),
    ("edgecall_files_processed_total", "counter", "Input files finished by this process",
     ("session", "files")),
    ("edgecall_reads_total", "counter", "Reads basecalled by this process", ("session", "reads")),
    ("edgecall_reads_failed_total", "counter", "Reads that failed in this process",
     ("session", "failed_reads")),
    ("edgecall_bases_total", "counter", "Bases called by this process", ("session", "bases")),
    ("edgecall_samples_total", "counter", "Raw samples basecalled by this process",
     ("session", "samples")),
    ("edgecall_samples_per_second", "gauge", "Samples/s over the last minute of work",
     ("rate", "samples_per_s")),
    ("edgecall_bases_per_second", "gauge", "Bases/s over the last minute of work",
     ("rate", "bases_per_s")),
    ("edgecall_journal_reads", "gauge", "Reads in all done files (journal, all runs)",
     ("journal", "reads")),
    ("edgecall_journal_bases", "gauge", "Bases in all done files (journal, all runs)",
     ("journal", "bases")),
    ("edgecall_engine_chunks_total", "counter", "Chunks run through the engine by this process",
     ("engine_stats", "chunks")),
    ("edgecall_engine_seconds_total", "counter", "Seconds spent inside the engine",
     ("engine_stats", "engine_seconds")),
    ("edgecall_batch_seconds_p50", "gauge", "Median engine batch latency (recent batches)",
     ("engine_stats", "batch_seconds_p50")),
    ("edgecall_batch_seconds_max", "gauge", "Slowest recent engine batch; WatchdogSec must "
     "exceed it", ("engine_stats", "batch_seconds_max")),
    ("edgecall_process_resident_memory_bytes", "gauge", "Resident set size",
     ("process", "rss_bytes")),
    ("edgecall_process_peak_resident_memory_bytes", "gauge", "Peak resident set size",
     ("process", "peak_rss_bytes")),
    ("edgecall_process_cpu_percent", "gauge", "CPU use of the process (100 = one core)",
     ("process", "cpu_percent")),
    ("edgecall_power_watts", "gauge", "Board power draw where a sensor exists",
     ("process", "power_watts")),
    ("edgecall_energy_joules", "counter", "Energy used where a sensor exists",
     ("process", "energy_joules")),
)


def _dig(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Follow ``path`` into nested dicts; None if any step is missing."""
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: Any) -> str | None:
    """A Prometheus sample value, or None to leave the metric out."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value else "NaN"
    return None


def _label(value: str) -> str:
    """Escape a label value."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(status: dict[str, Any]) -> str:
    """Render ``status`` in the Prometheus text exposition format (0.0.4)."""
    lines: list[str] = []
    info = {k: str(status.get(k) or "") for k in ("version", "model", "engine", "state")}
    if info.get("model") or info.get("version"):
        labels = ",".join(f'{k}="{_label(v)}"' for k, v in info.items())
        lines += ["# HELP edgecall_info Daemon version, model, engine and state",
                  "# TYPE edgecall_info gauge", f"edgecall_info{{{labels}}} 1"]
    for name, kind, text, path in _METRICS:
        value = _fmt(_dig(status, path))
        if value is None:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    source = _dig(status, ("process", "power_source"))
    if source:
        lines += ["# HELP edgecall_power_source_info Where the power figure comes from",
                  "# TYPE edgecall_power_source_info gauge",
                  f'edgecall_power_source_info{{source="{_label(str(source))}"}} 1']
    return "\n".join(lines) + "\n"


def parse_addr(text: str) -> tuple[str, int] | None:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); ``""``/``off`` disables.

    Raises :class:`EdgecallError` for a malformed or non-loopback address.
    """
    text = text.strip()
    if text.lower() in ("", "off", "none", "no"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise EdgecallError(f"--metrics-addr {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    host = host.strip("[]") or "127.0.0.1"
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise EdgecallError(f"--metrics-addr {text!r}: metrics are served on loopback only "
                                "(127.0.0.1, ::1 or localhost)")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows the status callback, with a cap on connections.

    Each connection has its own thread; beyond ``max_connections`` at once a new
    connection is closed at once, so idle or slow clients cannot pile up threads
    and file descriptors (the handler's ``timeout`` closes idle ones).
    """

    daemon_threads = True
    status_fn: StatusFn
    max_connections = 16

    def server_activate(self) -> None:
        """Listen, with the connection slots ready."""
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve on a new thread if a slot is free, else close the connection."""
        if not self._slots.acquire(blocking=False):
            log.debug("metrics: %d connections open; refusing %s", self.max_connections,
                      client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    """The IPv6 variant (``::1``)."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, /status, /healthz."""

    server: _Server
    server_version = "edgecall"
    timeout = 5.0  # seconds a client may stay silent before its connection is closed

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        """Answer one request."""
        route = self.path.split("?", 1)[0].rstrip("/") or "/"
        if route not in ("/metrics", "/status", "/healthz", "/"):
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /status\n")
            return
        try:
            status = self.server.status_fn()
        except Exception as exc:  # noqa: BLE001 - never kill the server thread
            log.exception("status callback failed")
            self._send(500, "text/plain; charset=utf-8", f"error: {exc}\n".encode())
            return
        if route == "/metrics":
            body = render_metrics(status).encode()
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
        elif route == "/healthz":
            ok = bool(status.get("ready"))
            self._send(200 if ok else 503, "text/plain; charset=utf-8",
                       b"ok\n" if ok else b"starting\n")
        else:
            body = json.dumps(status, indent=1, sort_keys=True, default=str).encode()
            self._send(200, "application/json", body + b"\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        """Write a complete response."""
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        """Route access logs to logging at DEBUG."""
        log.debug("%s " + format, self.address_string(), *args)


class MetricsServer:
    """The HTTP endpoint on a background thread.

    Parameters
    ----------
    host, port : str, int
        Loopback address; port 0 picks a free port (see :attr:`address`).
    status_fn : callable
        Returns the status dictionary (called on the server's threads).
    """

    def __init__(self, host: str, port: int, status_fn: StatusFn, *, timeout: float = 5.0,
                 max_connections: int = 16) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        base = _Server6 if ":" in host else _Server
        handler = type("_TimedHandler", (_Handler,), {"timeout": float(timeout)})
        cls = type("_CappedServer", (base,), {"max_connections": int(max_connections)})
        self._server = cls((host, port), handler)
        self._server.status_fn = status_fn
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="edgecall-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9464``."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> MetricsServer:
        """Start serving on the background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


class ProcessProbe:
    """Process figures from :mod:`edgecall.telemetry` (psutil fallback), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peak = 0
        self._started = False
        try:
            from edgecall import telemetry  # owned by another module; may be absent
            self._telemetry: Any = telemetry
        except ImportError:
            self._telemetry = None
        self._last: tuple[float, float] | None = None

    def start(self, sample_interval: float = 2.0) -> None:
        """Start the process-wide telemetry sampler (one slow background thread)."""
        configure = getattr(self._telemetry, "configure", None)
        if configure is None:
            return
        try:
            configure(interval=sample_interval)
            self._started = True
        except Exception as exc:  # noqa: BLE001 - telemetry must not break serving
            log.warning("telemetry sampler not started: %s", exc)

    def close(self) -> None:
        """Stop the sampler started by :meth:`start`."""
        shutdown = getattr(self._telemetry, "shutdown", None)
        if self._started and shutdown is not None:
            shutdown()
            self._started = False

    def snapshot(self) -> dict[str, Any]:
        """rss_bytes, peak_rss_bytes, cpu_percent, power_watts, energy_joules, power_source."""
        with self._lock:
            snap: dict[str, Any] = {}
            if self._telemetry is not None:
                try:
                    snap = dict(self._telemetry.snapshot())
                except Exception as exc:  # noqa: BLE001 - telemetry must not break serving
                    log.warning("telemetry snapshot failed: %s", exc)
            if snap.get("rss_bytes") is None or snap.get("cpu_percent") is None:
                snap = {**self._fallback(), **{k: v for k, v in snap.items() if v is not None}}
            rss = int(snap.get("rss_bytes") or 0)
            self._peak = max(self._peak, rss, _peak_rss())
            snap["peak_rss_bytes"] = self._peak
            for key in ("power_watts", "energy_joules", "power_source"):
                snap.setdefault(key, None)
            return snap

    def _fallback(self) -> dict[str, Any]:
        """RSS and CPU from /proc via the stdlib/psutil when telemetry is absent."""
        import resource

        wall = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        pct = 0.0
        if self._last is not None and wall > self._last[0]:
            pct = 100.0 * (cpu - self._last[1]) / (wall - self._last[0])
        self._last = (wall, cpu)
        return {"rss_bytes": _rss(), "cpu_percent": round(pct, 1)}


def _rss() -> int:
    """Current resident set size in bytes (Linux /proc; 0 if unknown)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss() -> int:
    """Peak resident set size in bytes (ru_maxrss is in KiB on Linux)."""
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
