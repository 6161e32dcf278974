"""``edgecall serve``: basecall pod5 files as MinKNOW finishes writing them.

Thin front door over :func:`edgecall.daemon.service.serve`; heavy imports
(onnxruntime, pod5) happen inside :func:`run`. Options may also come from the
environment (``EDGECALL_WATCH``, ``EDGECALL_OUTPUT``, ``EDGECALL_STATE``,
``EDGECALL_MODEL``...), which is how the systemd unit's EnvironmentFile feeds it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

HELP = "watch a folder and basecall each pod5 file once it is complete (daemon)"


def _env(name: str, default: str | None = None) -> str | None:
    """``EDGECALL_<NAME>`` from the environment, else ``default``."""
    value = os.environ.get(f"EDGECALL_{name}")
    return value if value not in (None, "") else default


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("serve", help=HELP, description=HELP + ". Every option "
                              "can also be set as EDGECALL_<OPTION> in the environment "
                              "(e.g. EDGECALL_WATCH, EDGECALL_POLL_INTERVAL).")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serve options (shared with the standalone entry point).

    Defaults from ``EDGECALL_*`` are strings that argparse converts with each
    option's ``type`` at parse time, so a bad value is reported as a usage error
    of ``serve`` and never breaks the other subcommands.
    """
    p.add_argument("--watch", type=Path, default=_env("WATCH"),
                   help="folder MinKNOW writes pod5 files to (watched recursively)")
    p.add_argument("--output", type=Path, default=_env("OUTPUT"),
                   help="output folder; one file per input, mirroring its relative path")
    p.add_argument("--state", type=Path, default=_env("STATE"),
                   help="journal, telemetry and lock folder (default: OUTPUT/.edgecall)")
    p.add_argument("--model", default=_env("MODEL"),
                   help="model name or folder (default: chosen from the first file's chemistry)")
    p.add_argument("--engine", default=_env("ENGINE", "onnx"),
                   help="onnx | auto (onnx for INT8 files, native for FP32) | native | tflite")
    p.add_argument("--variant", default=_env("VARIANT", "main"),
                   help="main (the card's own file) | fp32 | int8 | ...")
    p.add_argument("--threads", type=int, default=_env("THREADS", "0"),
                   help="engine threads (0 = all cores)")
    p.add_argument("--batch-size", type=int, default=_env("BATCH_SIZE", "32"),
                   help="chunks per engine call (default 32)")
    p.add_argument("--format", dest="fmt", choices=("fastq", "sam", "bam"),
                   default=_env("FORMAT", "fastq"), help="output format (default fastq)")
    p.add_argument("--metrics-addr", default=_env("METRICS_ADDR", "127.0.0.1:9464"),
                   help="loopback HOST:PORT for /metrics and /status; 'off' disables "
                        "(default 127.0.0.1:9464; port 0 = any free port)")
    p.add_argument("--poll-interval", type=float,
                   default=_env("POLL_INTERVAL", "5"), help="seconds between scans")
    p.add_argument("--settle", type=float, default=_env("SETTLE", "30"),
                   help="seconds a file's size must be stable before it is opened, and the "
                        "grace period before an unreadable file is quarantined (default 30)")
    p.add_argument("--quarantine", type=Path, default=_env("QUARANTINE"),
                   help="also hard-link (or copy) corrupt inputs into this folder")
    p.add_argument("--quarantine-move", action="store_true",
                   default=_env("QUARANTINE_MOVE", "") in ("1", "yes", "true"),
                   help="move corrupt inputs into --quarantine instead of linking")
    p.add_argument("--max-crashes", type=int, default=_env("MAX_CRASHES", "3"),
                   help="quarantine a file after this many attempts that failed with an "
                        "unexpected basecalling error (default 3)")
    p.add_argument("--max-interrupts", type=int, default=_env("MAX_INTERRUPTS", "10"),
                   help="quarantine a file after the daemon was killed (or died without a "
                        "word: OOM, power cut, segfault) this many times while calling it "
                        "(default 10)")
    p.add_argument("--telemetry-interval", type=float,
                   default=_env("TELEMETRY_INTERVAL", "60"),
                   help="seconds between telemetry JSONL records under --state (default 60)")
    p.add_argument("--once", action="store_true",
                   help="exit 0 once every file present has been handled")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                   help="DEBUG | INFO | WARNING (default INFO; -v/-vv can only lower it)")


def run(args: argparse.Namespace) -> int:
    """Run the daemon; returns the exit code (0 after SIGTERM/SIGINT or --once)."""
    import logging

    from edgecall.daemon.service import OneLineLogs, ServeConfig, serve
    from edgecall.errors import EdgecallError

    if args.watch is None or args.output is None:
        raise EdgecallError("edgecall serve: --watch and --output are required "
                            "(or EDGECALL_WATCH and EDGECALL_OUTPUT)")
    level = logging.getLevelName(str(args.log_level).upper())
    if not isinstance(level, int):
        raise EdgecallError(f"--log-level {args.log_level!r}: use DEBUG, INFO or WARNING")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:  # file names from the watch folder cannot forge lines
        handler.addFilter(OneLineLogs())
    root.setLevel(min(root.level or level, level))
    for name in ("poll_interval", "settle", "telemetry_interval"):
        if getattr(args, name) < 0:
            raise EdgecallError(f"--{name.replace('_', '-')} must be >= 0")
    config = ServeConfig(
        watch=args.watch.resolve(), output=args.output.resolve(),
        state=(args.state or args.output / ".edgecall").resolve(), model=args.model,
        engine=args.engine, threads=args.threads, variant=args.variant,
        batch_size=args.batch_size, fmt=args.fmt, metrics_addr=args.metrics_addr,
        poll_interval=args.poll_interval, settle=args.settle, once=args.once,
        quarantine=args.quarantine.resolve() if args.quarantine else None,
        quarantine_move=args.quarantine_move, max_crashes=args.max_crashes,
        max_interrupts=args.max_interrupts,
        telemetry_interval=args.telemetry_interval,
        command_line=shlex.join(["edgecall", *sys.argv[1:]]))
    return serve(config)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m edgecall.cli.serve``)."""
    from edgecall.errors import EdgecallError

    parser = argparse.ArgumentParser(prog="edgecall serve", description=HELP)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except EdgecallError as exc:
        print(f"edgecall serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
