"""The ``edgecall`` command line: one module per subcommand, each with register/run.

Only argparse is imported at start-up so ``edgecall --help`` is instant on a Pi;
every subcommand imports what it needs inside its ``run``. Errors print as one
line (``edgecall: error: ...``); ``EDGECALL_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from edgecall import __version__
from edgecall.cli.options import subparser_of, use_defaults_formatter

SUBCOMMANDS = ("basecall", "serve", "profile", "models", "summary")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edgecall", description="Lean on-device nanopore basecaller.")
    parser.add_argument("--version", action="version", version=f"edgecall {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"edgecall.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgecall.cli.{name}":
                continue
            raise
        mod.register(sub)
    use_defaults_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgecall`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report under the subcommand's own usage, not the top level's
        (subparser_of(parser, args.command) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="edgecall: %(levelname)s: %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("edgecall: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - top level: one line unless debugging
        if os.environ.get("EDGECALL_DEBUG"):
            raise
        from edgecall.errors import EdgecallError

        msg = str(exc) if isinstance(exc, EdgecallError) else f"{type(exc).__name__}: {exc}"
        print(f"edgecall: error: {msg.strip().splitlines()[0] if msg.strip() else msg}",
              file=sys.stderr)
        return 1
