"""Inference engines behind one interface (see :mod:`edgecall.engines.base`)."""

from __future__ import annotations

from edgecall.engines.base import Engine
from edgecall.errors import ModelError
from edgecall.models import ModelCard

ENGINES = ("onnx", "native", "tflite")


def create(name: str, card: ModelCard, *, threads: int = 0, variant: str = "fp32") -> Engine:
    """Instantiate engine ``name`` for ``card``; heavy imports happen here."""
    if name == "onnx":
        from edgecall.engines.onnx import OnnxEngine
        return OnnxEngine.from_model(card, threads=threads, variant=variant)
    if name == "native":
        from edgecall.engines.native import NativeEngine  # type: ignore[import-not-found]
        return NativeEngine.from_model(card, threads=threads, variant=variant)
    if name == "tflite":
        from edgecall.engines.tflite import TFLiteEngine  # type: ignore[import-not-found]
        return TFLiteEngine.from_model(card, threads=threads, variant=variant)
    raise ModelError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")


__all__ = ["Engine", "ENGINES", "create"]
