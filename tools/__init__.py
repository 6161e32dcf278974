"""Workstation tools: data, simulate, teacher, train, evaluate, prune, quantize, export, report.

Each step is a module with typed functions plus ``register(subparsers)`` and
``run(args) -> int`` for the ``python -m tools <step>`` command line. ``tools``
imports ``edgecall``; ``edgecall`` never imports ``tools``.
"""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where datasets, runs and variant files go: ``$EDGECALL_CACHE``, else
    ``$XDG_CACHE_HOME/edgecall`` (``~/.cache/edgecall``). Never inside the project."""
    env = os.environ.get("EDGECALL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgecall"
