"""Records that flow through the basecalling pipeline.

Each pipeline stage is ``Iterable[A] -> Iterator[B]`` over these frozen, slotted
dataclasses: ``Read`` (reader) -> ``Chunk`` (signal) -> ``Batch`` (pipeline) ->
posteriors (engine) -> ``CalledRead`` (decode) -> writer. A read that fails
anywhere becomes a ``Failed`` record that is counted, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class RunMeta:
    """Run-level facts about a read, taken from its pod5 run info."""

    flow_cell_product_code: str = ""
    sequencing_kit: str = ""
    sample_rate: int = 0
    experiment_name: str = ""
    flow_cell_id: str = ""
    sample_id: str = ""
    protocol_name: str = ""
    run_id: str = ""
    acquisition_start_time: str = ""  # ISO 8601 UTC ("" = unknown)
    device_id: str = ""  # sequencer position, e.g. MN12345 or 1A
    device_type: str = ""  # sequencer position type, e.g. MinION
    protocol_run_id: str = ""


@dataclass(frozen=True, slots=True)
class Read:
    """One raw read: int16 signal plus the calibration that maps it to pA.

    ``pA = (signal + offset) * scale``.
    """

    read_id: str
    signal: np.ndarray  # int16, shape [n]
    offset: float
    scale: float
    sample_rate: int
    channel: int = 0
    well: int = 0
    read_number: int = 0
    start_sample: int = 0
    end_reason: str = ""
    run: RunMeta = field(default_factory=RunMeta)
    path: str = ""

    @property
    def num_samples(self) -> int:
        """Number of raw samples."""
        return int(self.signal.shape[0])

    def signal_pa(self) -> np.ndarray:
        """Calibrated signal in picoamperes (float32)."""
        return ((self.signal.astype(np.float32) + np.float32(self.offset))
                * np.float32(self.scale))


@dataclass(frozen=True, slots=True)
class Chunk:
    """A fixed-length window of one read's normalised signal.

    ``start`` is the sample index (in the model's sample rate) of the chunk's
    first sample; ``length`` the number of real (unpadded) samples in it.
    ``index`` and ``total`` place the chunk within its read.
    """

    read_id: str
    index: int
    total: int
    start: int
    length: int
    signal: np.ndarray  # float32, shape [T]


@dataclass(frozen=True, slots=True)
class CalledRead:
    """A basecalled read, ready for a writer."""

    read_id: str
    sequence: str
    quality: str  # Phred+33
    moves: np.ndarray  # uint8, one entry per output frame
    stride: int  # input samples per output frame (in the original sample rate)
    num_samples: int  # ns: samples in the raw read
    trimmed_samples: int  # ts: samples trimmed from the start before move 0
    mean_qscore: float
    sample_rate: int
    channel: int = 0
    read_number: int = 0
    start_sample: int = 0
    run: RunMeta = field(default_factory=RunMeta)
    extra: Mapping[str, Any] = field(default_factory=dict)
    well: int = 0  # mx: the mux the read came through
    path: str = ""  # the pod5 file the read came from (fn: its name)
    end_reason: str = ""
    norm_shift: float = 0.0  # sm: pA shift of the model's standardisation
    norm_scale: float = 1.0  # sd: pA scale of the model's standardisation
    norm_method: str = ""  # the card's normalisation method (median_mad or fixed)


@dataclass(frozen=True, slots=True)
class Failed:
    """A read (or a whole file, ``read_id == ""``) that could not be called.

    ``kind`` is ``"error"`` for bad input (a corrupt file or read, a chemistry the
    model cannot call) and ``"short"`` for a read below the minimum length, which
    is skipped and counted but is no error.
    """

    path: str
    read_id: str
    reason: str
    kind: str = "error"
