"""Exceptions with one-line messages meant for users."""

from __future__ import annotations


class EdgecallError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class InputError(EdgecallError):
    """A bad input file or read (missing, not pod5, truncated, corrupt)."""


class ModelError(EdgecallError):
    """A model that cannot be found, loaded, or used for this input."""


class ChemistryMismatch(ModelError):
    """The input's chemistry or sample rate does not match the model."""


class UnsupportedGraph(ModelError):
    """An ONNX graph uses an operator the native engine does not implement."""
