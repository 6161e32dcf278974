"""``python -m tools <step> ...``: the workstation command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

STEPS = ("data", "data_bam", "simulate", "teacher", "teachers.importer", "train", "evaluate",
         "prune", "quantize", "export", "tflite_export", "report")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one step; one-line errors unless EDGECALL_DEBUG=1."""
    parser = argparse.ArgumentParser(prog="python -m tools", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True)
    for step in STEPS:
        try:
            mod = importlib.import_module(f"tools.{step}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tools.{step}":
                continue  # step not written yet
            raise
        mod.register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - top level: one line unless debugging
        if os.environ.get("EDGECALL_DEBUG"):
            raise
        print(f"tools {args.step}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
