"""A small stdlib client for the systemd notification protocol (``sd_notify``).

systemd passes a datagram socket address in ``$NOTIFY_SOCKET`` to a service with
``Type=notify``; the service sends newline-separated ``KEY=VALUE`` assignments
to it: ``READY=1`` once it is serving, ``STATUS=...`` free-form progress,
``WATCHDOG=1`` keep-alive pings (required at least every ``$WATCHDOG_USEC``
microseconds when ``WatchdogSec=`` is set) and ``STOPPING=1`` on shutdown.
Addresses starting with ``@`` are in the Linux abstract socket namespace.

Without ``$NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same in
a terminal. Send errors are logged once and never raised: the notifier must not
take the basecaller down. Protocol reference: ``man 3 sd_notify``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str | None:
    """Socket address from ``$NOTIFY_SOCKET`` (``@`` = abstract namespace)."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX path; systemd notifications off", raw)
    return None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between required watchdog pings, or None when no watchdog applies.

    Mirrors ``sd_watchdog_enabled``: ``$WATCHDOG_USEC`` gives the timeout and
    ``$WATCHDOG_PID``, when set, must name this process.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid and wpid.isdigit() and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog pings off", usec)
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """Send ``sd_notify`` messages; a no-op when not started by systemd.

    Parameters
    ----------
    env : mapping, optional
        Environment to read ``NOTIFY_SOCKET``/``WATCHDOG_USEC`` from (default
        ``os.environ``).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_timeout = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._warned = False
        self._last_ping = 0.0
        self._lock = threading.Lock()  # the heartbeat thread pings too

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; return True if it was sent."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX,
                                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self.address)
            except OSError as exc:
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s",
                                self.address.replace("\0", "@"), exc)
                    self._warned = True
                return False
        return True

    def ready(self, status: str = "") -> bool:
        """Tell systemd the service is up (``READY=1``)."""
        return self.notify("READY=1", *([_status(status)] if status else []))

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status``."""
        return self.notify(_status(text))

    def stopping(self, status: str = "") -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1", *([_status(status)] if status else []))

    def watchdog(self) -> bool:
        """Send ``WATCHDOG=1`` unconditionally (when a socket is configured)."""
        self._last_ping = time.monotonic()
        return self.notify("WATCHDOG=1")

    def ping_due(self, now: float | None = None) -> bool:
        """True when a watchdog is configured and half its timeout has passed."""
        if self.watchdog_timeout is None or self.address is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_ping >= self.watchdog_timeout / 2

    def keepalive(self) -> bool:
        """Ping the watchdog if one is due; call this only while work progresses."""
        if self.ping_due():
            return self.watchdog()
        return False

    def close(self) -> None:
        """Close the socket."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Heartbeat:
    """Pings the watchdog from a thread while the engine makes progress inside one read.

    The main loop pings between reads; a single very long read can keep it away
    longer than ``WatchdogSec``. This thread pings only when the engine's chunk
    counter moved since its last look, so a hung engine (or a main loop stuck
    long enough for the bounded queues to fill) still stops the pings.
    """

    def __init__(self, notifier: Notifier, progress: Callable[[], int]) -> None:
        self._notifier = notifier
        self._progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgecall-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        """Start the thread (only meaningful when a watchdog is configured)."""
        if self._notifier.watchdog_timeout:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        """Every quarter watchdog period: ping if the progress counter moved."""
        timeout = self._notifier.watchdog_timeout or 1.0
        last = self._progress()
        while not self._stop.wait(timeout / 4):
            now = self._progress()
            if now != last:
                last = now
                self._notifier.keepalive()


def _status(text: str) -> str:
    """A ``STATUS=`` assignment on one line."""
    return "STATUS=" + " ".join(text.split())
