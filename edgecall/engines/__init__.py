"""Inference engines behind one interface (see :mod:`edgecall.engines.base`)."""

from __future__ import annotations

import logging

from edgecall.engines.base import Engine
from edgecall.errors import ModelError, UnsupportedGraph
from edgecall.models import ModelCard

log = logging.getLogger(__name__)

ENGINES = ("auto", "onnx", "native", "tflite")


def create(name: str, card: ModelCard, *, threads: int = 0, variant: str = "main") -> Engine:
    """Instantiate engine ``name`` for ``card``; heavy imports happen here.

    ``auto`` is onnxruntime for INT8 (QDQ) model files, whose U8S8/S8S8 kernels
    outran edgecall's native INT8 (models/compression/r941_dsc_c128_v1/report.md: 2.55
    vs 1.81 M samples/s per x86 thread for the width-80 default; the Pi projection
    agrees), and for FP32 files the native engine when its kernels are built and it
    supports the graph (1.7x onnxruntime FP32), otherwise onnxruntime; the choice is
    logged.
    """
    if name == "auto":
        path = card.variant_path(variant)
        if path.suffix == ".onnx" and is_qdq(path):
            log.info("%s is INT8 QDQ: using onnxruntime", path.name)
            return create("onnx", card, threads=threads, variant=variant)
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


def is_qdq(path) -> bool:  # noqa: ANN001 - str or Path
    """True if the ONNX file at ``path`` holds QuantizeLinear/DequantizeLinear nodes."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # unreadable files get their clear error from the engine itself
        return False
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


__all__ = ["Engine", "ENGINES", "create", "is_qdq"]
