"""TFLite engine: FP32 and full-integer INT8 ``.tflite`` models through LiteRT.

The interpreter comes from ``ai-edge-litert`` (``pip install edgecall[tflite]``)
or, failing that, the older ``tflite-runtime``; both run the XNNPACK delegate
with ``threads`` threads. ``tools tflite-export`` writes models with a fixed
input shape ``[N0, 1, T0]`` (the converter bakes the shapes into its reshapes),
so the engine allocates that shape once and then:

* a batch with fewer than ``N0`` chunks is zero-padded to ``N0`` and the
  extra rows are dropped (exact: rows are independent);
* a batch with more than ``N0`` chunks runs in slices of ``N0``;
* a different chunk length ``T`` is tried once with a tensor resize; a graph
  that cannot be resized gives a one-line :class:`~edgecall.errors.ModelError`
  naming the length it was exported for.

Full-integer models take int8 input: the engine quantises the float signal
with the input tensor's scale/zero point, and dequantises an int8 output.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgecall.engines.base import check_batch
from edgecall.errors import ModelError
from edgecall.models import ModelCard

log = logging.getLogger(__name__)

#: engine variant -> (card variant key, conventional file name)
VARIANT_FILES: dict[str, tuple[str, str]] = {
    "fp32": ("tflite", "model.tflite"),
    "int8": ("tflite_int8", "model.int8.tflite"),
}


def load_interpreter_class() -> tuple[type, str]:
    """The LiteRT ``Interpreter`` class and the name of the package providing it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise ModelError("the tflite engine needs ai-edge-litert (pip install "
                         "'edgecall[tflite]') or tflite-runtime; neither is installed") from None


def tflite_path(card: ModelCard, variant: str = "main") -> Path:
    """The ``.tflite`` file of ``card`` for ``variant`` (``fp32`` or ``int8``).

    ``main`` (or ``""``) follows the precision of the card's main file, so an INT8
    default model runs its full-integer TFLite file.
    """
    if variant in ("", "main"):
        variant = card.precision
    if variant not in VARIANT_FILES:
        raise ModelError(f"model {card.name}: the tflite engine has no {variant!r} variant "
                         f"(choose from {', '.join(VARIANT_FILES)})")
    key, default = VARIANT_FILES[variant]
    path = card.folder / card.variants.get(key, default)
    if not path.is_file():
        raise ModelError(f"model {card.name}: no TFLite {variant} file ({path} is missing; "
                         "make one with `python -m tools tflite-export`)")
    return path


class TFLiteEngine:
    """Runs a ``.tflite`` model with the LiteRT interpreter and XNNPACK."""

    name = "tflite"

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        interpreter_cls, self.runtime = load_interpreter_class()
        self.path = Path(path)
        self.threads = int(threads) if threads and threads > 0 else (os.cpu_count() or 1)
        try:
            self.interpreter = interpreter_cls(model_path=str(self.path),
                                               num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: the TFLite interpreter cannot load the model: "
                             f"{first}") from None
        self._input: dict[str, Any] = self.interpreter.get_input_details()[0]
        self._output: dict[str, Any] = self.interpreter.get_output_details()[0]
        shape = tuple(int(s) for s in self._input["shape"])
        if len(shape) != 3 or shape[1] != 1:
            raise ModelError(f"{self.path}: TFLite input must be [N, 1, T], got {list(shape)}")
        self.batch, self.length = shape[0], shape[2]
        log.debug("%s %s on %s: input %s %s, %d threads", self.runtime, self.path.name,
                  self.path.parent, list(shape), np.dtype(self._input["dtype"]).name,
                  self.threads)

    @classmethod
    def from_model(cls, card: ModelCard, *, threads: int = 0,
                   variant: str = "main") -> "TFLiteEngine":
        """Build the engine for a model card's TFLite file (``variant`` fp32 or int8)."""
        return cls(tflite_path(card, variant), threads=threads)

    @property
    def input_dtype(self) -> np.dtype:
        """dtype the graph takes (float32, or int8 for full-integer models)."""
        return np.dtype(self._input["dtype"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, 1, T] float32 -> [N, T', C] float32 (any N; T as exported)."""
        x = check_batch(batch)
        n, _, t = x.shape
        if t != self.length:
            self._resize(t)
        outs = [self._run_full(x[i:i + self.batch]) for i in range(0, n, self.batch)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _resize(self, length: int) -> None:
        """Re-allocate for chunk length ``length`` or raise a one-line ModelError."""
        try:
            self.interpreter.resize_tensor_input(self._input["index"], [self.batch, 1, length])
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            self.interpreter.resize_tensor_input(self._input["index"],
                                                 [self.batch, 1, self.length])
            self.interpreter.allocate_tensors()
            raise ModelError(f"{self.path}: this TFLite model was exported for chunks of "
                             f"{self.length} samples and cannot run {length}; use "
                             f"--chunk-size {self.length} or re-export it") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.length = length

    def _run_full(self, x: np.ndarray) -> np.ndarray:
        """Run up to ``self.batch`` rows, zero-padding to the allocated batch."""
        rows = x.shape[0]
        if rows < self.batch:
            x = np.concatenate([x, np.zeros((self.batch - rows, 1, x.shape[2]), x.dtype)])
        self.interpreter.set_tensor(self._input["index"], self._quantise(x))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])
        return self._dequantise(out)[:rows]

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        """Float input -> the graph's input dtype (int8/uint8 via scale and zero point)."""
        dtype = self.input_dtype
        if dtype == np.float32:
            return x
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        q = np.rint(x / np.float32(scale)) + zero
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantise(self, out: np.ndarray) -> np.ndarray:
        """Graph output -> float32 (int8 outputs via scale and zero point)."""
        if out.dtype == np.float32:
            return np.array(out, dtype=np.float32, copy=True)
        scale, zero = self._output["quantization"]
        return ((out.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
