"""``edgecall profile``: throughput, latency, memory, CPU and power per engine setting."""

from __future__ import annotations

import argparse
import sys


def _ints(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (argparse type)."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``profile`` subcommand."""
    p = sub.add_parser(
        "profile", help="measure throughput, latency, memory, CPU and power",
        description="Basecall the given reads (replayed until --duration) once per "
        "engine x threads x batch-size setting and report samples/s, bases/s, MinION "
        "channels kept up with (512 = a full flow cell), engine latency per chunk, "
        "RSS, CPU and, where a power sensor exists, watts and J/Mbase.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="pod5 files or folders of them")
    p.add_argument("--model", help="bundled model name or model folder "
                   "(default: picked by the reads' chemistry)")
    p.add_argument("--engine", default="onnx,native,tflite",
                   help="comma-separated engines, name[:variant] e.g. onnx,onnx:int8,native "
                   "(default: %(default)s; missing ones are reported as unavailable)")
    p.add_argument("--threads", type=_ints, default=None,
                   help="comma-separated engine thread counts (default: all usable cores)")
    p.add_argument("--batch-size", type=_ints, default=[32], help="comma-separated chunks "
                   "per engine call (default: 32)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of measurement per setting (default: %(default)s)")
    p.add_argument("--max-reads", type=int, help="use at most this many reads")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    p.add_argument("--json", metavar="FILE", help="write every figure and the machine "
                   "description as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of throughput and energy "
                   "(needs matplotlib: pip install 'edgecall[plot]')")
    p.add_argument("--power-cmd", metavar="CMD", help="command printing the current power in "
                   "watts (an external meter); overrides sensor detection")
    p.add_argument("--idle", type=float, default=0.0, metavar="S",
                   help="first measure idle power for S seconds, to also report the energy "
                   "per megabase above idle (needs a power source)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status."""
    from edgecall.errors import EdgecallError
    from edgecall.profiling import SettingResult, profile

    if args.duration <= 0:
        raise EdgecallError("--duration must be positive")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise EdgecallError(f"--plot {args.plot}: the plot is a PNG; give a FILE.png")
    if args.plot:  # fail before minutes of measuring, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise EdgecallError("--plot needs matplotlib: pip install 'edgecall[plot]'"
                                ) from None
    threads = args.threads or [_usable_cores()]

    def progress(r: SettingResult) -> None:
        state = (f"{r.samples_per_s:,.0f} samples/s, {r.channels:,.1f} channels"
                 if r.available else f"unavailable: {r.error}")
        print(f"edgecall: {r.setting.label}: {state}", file=sys.stderr)

    report = profile(args.paths, model=args.model, engines=args.engine, threads=threads,
                     batch_sizes=args.batch_size, duration=args.duration,
                     power_cmd=args.power_cmd, recursive=args.recursive,
                     max_reads=args.max_reads, idle=args.idle, on_result=progress)
    print(report.table())
    if args.json:
        report.write_json(args.json)
    if args.plot:
        report.plot(args.plot)
    if not any(r.available for r in report.results):
        print("edgecall: error: no engine setting could be measured", file=sys.stderr)
        return 1
    return 0


def _usable_cores() -> int:
    """CPU cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
