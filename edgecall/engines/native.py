"""The native engine: edgecall's own kernels running the model's ONNX file (fp32 or QDQ int8).

The ONNX graph is read with ``onnx`` and lowered once into a short list of
steps over channels-last ``[N, T, C]`` tensors, fusing as it goes: folded
BatchNorm, bias, ReLU/Clip/SiLU and the residual Add go into the producing
convolution's epilogue; in QDQ models a ``DequantizeLinear -> Conv ->
QuantizeLinear`` chain becomes one int8 convolution with int32 accumulation and
requantisation (ReLU/Clip narrow its clamp range), ``Add`` of two quantised
tensors becomes a quantised add, ``Transpose [N,C,T] -> [N,T,C]`` is free (the
data already is channels-last), and ``DequantizeLinear`` of a tensor is a view.
Supported ops: Conv (any groups, dilation 1), BatchNormalization, Relu, Clip,
Sigmoid, Mul, Add, Concat (channels), MatMul (output projection), Transpose, LogSoftmax, Softmax,
Identity, QuantizeLinear, DequantizeLinear; anything else raises
:class:`~edgecall.errors.UnsupportedGraph` naming the op and node.

A depthwise conv feeding only a pointwise conv runs as one fused kernel (the
depthwise rows stay in a per-thread buffer), and a 1-channel stem conv is a
GEMM over overlapping signal windows. Buffers are planned by liveness and
allocated once per batch shape; with several threads a batch is split into one
slice per thread. int8 results equal onnxruntime's QDQ reference semantics
(graph optimisations off) except for rare 1-LSB rounding ties, where our exact
integer arithmetic and its float convolution differ.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgecall.engines import native_ops as ops
from edgecall.engines.base import check_batch
from edgecall.errors import ModelError, UnsupportedGraph
from edgecall.kernels_backend import Kernels, kernels
from edgecall.models import ModelCard

log = logging.getLogger(__name__)


def supports(card: ModelCard, variant: str = "main") -> bool:
    """True if the native engine can run ``card``'s ``variant`` file.

    For choosing the default engine: lowers the graph once (tens of ms) and
    returns False on :class:`~edgecall.errors.UnsupportedGraph` or a missing
    file/variant, so callers can fall back to onnxruntime.
    """
    try:
        import onnx

        path = card.variant_path(variant)
        graph = onnx.load(str(path)).graph
    except (ModelError, OSError, ValueError):
        return False
    except Exception:  # noqa: BLE001 - protobuf DecodeError and friends: not a model
        return False
    try:
        ops.lower(graph)
    except UnsupportedGraph:
        return False
    return True


class NativeEngine:
    """Runs a supported ONNX model with edgecall's compiled kernels."""

    name = "native"

    def __init__(self, path: str | Path, *, threads: int = 0, pure: bool | None = None) -> None:
        self.path = Path(path)
        self.threads = int(threads) if threads and threads > 0 else (os.cpu_count() or 1)
        self.kern: Kernels = kernels(pure)
        try:
            import onnx

            model = onnx.load(str(self.path))
        except FileNotFoundError:
            raise ModelError(f"{self.path}: model file not found") from None
        except Exception as exc:  # onnx raises DecodeError and others
            raise ModelError(f"{self.path}: not a readable ONNX model: {exc}") from None
        try:
            self.program = ops.lower(model.graph, int(self.kern.qpack()))
        except UnsupportedGraph as exc:
            raise UnsupportedGraph(f"{self.path}: {exc}") from None
        self.quantized = self.program.quantized
        self._plans: dict[tuple[int, int, int], ops.Plan] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # plans own their buffers: one run at a time
        log.info("native engine: %s, %d steps (%s), %s, %d threads", self.path.name,
                 len(self.program.steps), "int8" if self.quantized else "fp32",
                 self.kern.describe(), self.threads)

    @classmethod
    def from_model(cls, card: ModelCard, *, threads: int = 0,
                   variant: str = "main") -> "NativeEngine":
        """Build the engine for a model card's ``variant`` file (``fp32`` or ``int8``)."""
        return cls(card.variant_path(variant), threads=threads)

    def close(self) -> None:
        """Stop the worker threads (the engine restarts them if used again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def describe(self) -> str:
        """The lowered program, one step per line (for logs and debugging)."""
        return "\n".join(s.describe() for s in self.program.steps)

    def _plan(self, n: int, t: int, part: int) -> ops.Plan:
        """The (cached) buffer plan for ``n`` chunks of ``t`` samples, worker ``part``."""
        plan = self._plans.get((n, t, part))
        if plan is None:
            if len(self._plans) > 16:
                self._plans.clear()  # bounded: a few batch shapes are typical
            plan = ops.Plan(self.program, n, t)
            self._plans[(n, t, part)] = plan
        return plan

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, 1, T] float32 -> [N, T', C] float32 (a fresh array).

        With several threads and chunks, the batch is split into one slice per
        thread, each run through the whole network by single-threaded kernels
        (no barriers between layers, one cache-resident working set per core);
        a single chunk uses all threads inside each kernel instead.
        """
        x = check_batch(batch)
        with self._lock:
            return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One batch (caller holds the lock)."""
        n, _, t = x.shape
        parts = min(self.threads, n)
        if parts <= 1:
            return self._plan(n, t, 0).execute(x, self.kern, self.threads)
        bounds = np.linspace(0, n, parts + 1).astype(int)
        slices = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="native")
        futures = [self._pool.submit(self._plan(len(s), t, i).execute, s, self.kern, 1)
                   for i, s in enumerate(slices)]
        return np.concatenate([f.result() for f in futures])
