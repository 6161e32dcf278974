"""Inference engines behind one interface (see :mod:`edgecall.engines.base`)."""

from __future__ import annotations

import logging

from edgecall.engines.base import Engine
from edgecall.errors import ModelError, UnsupportedGraph
from edgecall.models import ModelCard

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnx", "native", "tflite")


def create(name: str, card: ModelCard, *, threads: int = 0, variant: str = "fp32") -> Engine:
    """Instantiate engine ``name`` for ``card``; heavy imports happen here.

    ``auto`` is the native engine when its kernels are built and it supports
    the model's graph, otherwise onnxruntime; the choice is logged.
    """
    if name == "auto":
        try:
            return create("native", card, threads=threads, variant=variant)
        except (ImportError, UnsupportedGraph) as exc:
            log.info("native engine not used for %s (%s); using onnxruntime", card.name, exc)
            return create("onnx", card, threads=threads, variant=variant)
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
