"""Workstation tools: data, simulate, teacher, train, evaluate, prune, quantize, export, report.

Each step is a module with typed functions plus ``register(subparsers)`` and
``run(args) -> int`` for the ``python -m tools <step>`` command line. ``tools``
imports ``edgecall``; ``edgecall`` never imports ``tools``.
"""
