"""onnxruntime engine: FP32 and INT8 (QDQ) ONNX models on the CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgecall.engines.base import check_batch
from edgecall.errors import ModelError
from edgecall.models import ModelCard

log = logging.getLogger(__name__)


class OnnxEngine:
    """Runs an ONNX model with onnxruntime's CPU provider."""

    name = "onnx"

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: onnxruntime cannot load the model: {first}") from None
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        log.debug("onnxruntime %s on %s, %d threads", ort.__version__, path, threads)

    @classmethod
    def from_model(cls, card: ModelCard, *, threads: int = 0,
                   variant: str = "main") -> "OnnxEngine":
        """Build the engine for a model card's file (``variant`` e.g. ``int8``)."""
        return cls(card.variant_path(variant), threads=threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, 1, T] float32 -> [N, T', C] float32."""
        x = check_batch(batch)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)
