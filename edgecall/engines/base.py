"""The Engine protocol every inference backend implements.

``Engine.run(batch)`` takes ``[N, 1, T]`` float32 normalised signal and returns
``[N, T // stride, C]`` float32 network outputs (log-posteriors or logits as the
model card says). Engines are built with ``Engine.from_model(card, threads=...)``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """An inference backend for one model."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on ``[N, 1, T]`` float32; return ``[N, T', C]`` float32."""
        ...


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Validate and return a C-contiguous float32 ``[N, 1, T]`` batch."""
    if batch.ndim != 3 or batch.shape[1] != 1:
        raise ValueError(f"engine input must be [N, 1, T], got shape {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)
