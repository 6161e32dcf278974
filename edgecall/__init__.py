"""edgecall: a lean on-device nanopore basecaller for ARM single-board computers."""

__version__ = "0.1.0"
