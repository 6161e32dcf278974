"""Test kit: a tiny ONNX "level model" with known weights and pod5 files that encode sequences.

The level model averages the signal over each ``stride`` window and scores the
five classes (blank, A, C, G, T) by how close that mean is to a fixed level per
class (``LEVELS`` in pA): ``logit_c = k (2 mu_c x - x^2 - mu_c^2)``. A signal made
of constant segments at those levels therefore decodes to a sequence we know
in advance, which lets tests check the whole pipeline (reader -> signal ->
engine -> stitch -> decode -> writer) base for base. It is a plumbing fixture,
not a basecaller.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import numpy as np

LEVELS = {"N": 0.0, "A": 10.0, "C": 20.0, "G": 30.0, "T": 40.0}
SHARPNESS = 0.05


def make_level_onnx(path: Path, stride: int = 4) -> None:
    """Write the level model as an ONNX file (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mus = np.array(list(LEVELS.values()), dtype=np.float32)
    w_avg = np.full((1, 1, stride), 1.0 / stride, dtype=np.float32)
    w_cls = np.stack([2 * mus, -np.ones(5, np.float32)], axis=1)[:, :, None] * SHARPNESS
    b_cls = (-(mus ** 2) * SHARPNESS).astype(np.float32)
    inits = [numpy_helper.from_array(w_avg, "w_avg"),
             numpy_helper.from_array(w_cls.astype(np.float32), "w_cls"),
             numpy_helper.from_array(b_cls, "b_cls")]
    nodes = [
        helper.make_node("Conv", ["signal", "w_avg"], ["mean"], strides=[stride],
                         kernel_shape=[stride]),
        helper.make_node("Mul", ["mean", "mean"], ["sq"]),
        helper.make_node("Concat", ["mean", "sq"], ["feat"], axis=1),
        helper.make_node("Conv", ["feat", "w_cls", "b_cls"], ["logits"], kernel_shape=[1]),
        helper.make_node("Transpose", ["logits"], ["ntc"], perm=[0, 2, 1]),
        helper.make_node("LogSoftmax", ["ntc"], ["logprobs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "level_model",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["N", "F", 5])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_test_model(folder: Path, *, stride: int = 4, chunk_size: int = 400, overlap: int = 80,
                    pore: str = "r9.4.1", sample_rate: int = 4000,
                    accepted: tuple[int, ...] = (4000,), name: str = "test_level_model",
                    checksum: bool = True) -> Path:
    """A model folder (card.toml + model.onnx) holding the level model."""
    from edgecall.models import sha256_file, write_card_toml

    folder.mkdir(parents=True, exist_ok=True)
    make_level_onnx(folder / "model.onnx", stride)
    write_card_toml(folder, {
        "name": name,
        "description": "test fixture: level model with known weights (not a basecaller)",
        "chemistry": {"pore": pore, "sample_rate": sample_rate,
                      "accepted_sample_rates": list(accepted)},
        "model": {"file": "model.onnx", "alphabet": "NACGT", "stride": stride,
                  "chunk_size": chunk_size, "overlap": overlap, "output": "log_softmax"},
        "normalisation": {"method": "fixed", "shift": 0.0, "scale": 1.0},
        "files": {"model.onnx": sha256_file(folder / "model.onnx")} if checksum else {}})
    return folder


def encode(seq: str, rng: np.random.Generator, *, stride: int = 4, min_frames: int = 2,
           max_frames: int = 4, noise: float = 0.5) -> np.ndarray:
    """Signal (pA) whose level-model decode is ``seq``: base segments separated by blanks."""
    parts = [np.full(stride * 3, LEVELS["N"])]
    for base in seq:
        for level in (LEVELS[base], LEVELS["N"]):
            n = stride * int(rng.integers(min_frames, max_frames + 1))
            parts.append(np.full(n, level))
    x = np.concatenate(parts) + rng.normal(0, noise, sum(p.size for p in parts))
    return x.astype(np.float32)


def write_pod5(path: Path, reads: dict[str, np.ndarray], *, sample_rate: int = 4000,
               flow_cell: str = "FLO-MIN106", kit: str = "SQK-LSK109",
               run_id: str = "edgecall-test-run",
               started: datetime.datetime = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
               ) -> None:
    """Write pA signals as a real pod5 file (calibration offset 0, scale 1)."""
    import pod5

    run = pod5.RunInfo(
        acquisition_id=run_id, acquisition_start_time=started,
        adc_max=8191, adc_min=-8192, context_tags={"sample_frequency": str(sample_rate)},
        experiment_name="edgecall-tests", flow_cell_id="FAK00000",
        flow_cell_product_code=flow_cell, protocol_name="test", protocol_run_id="test",
        protocol_start_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        sample_id="sample", sample_rate=sample_rate, sequencing_kit=kit.lower(),
        sequencer_position="MN00000", sequencer_position_type="MinION", software="edgecall",
        system_name="test", system_type="test", tracking_id={"sample_frequency": str(sample_rate)})
    with pod5.Writer(path) as w:
        for i, (rid, pa) in enumerate(reads.items()):
            raw = np.round(pa).astype(np.int16)
            w.add_read(pod5.Read(
                read_id=uuid.UUID(rid), pore=pod5.Pore(channel=i + 1, well=1, pore_type="test"),
                calibration=pod5.Calibration(offset=0.0, scale=1.0), read_number=i,
                start_sample=1000 * i, median_before=200.0,
                end_reason=pod5.EndReason.from_reason_with_default_forced(
                    pod5.EndReasonEnum.SIGNAL_POSITIVE),
                run_info=run, signal=raw))


def random_seq(rng: np.random.Generator, n: int) -> str:
    """A random ACGT string."""
    return "".join(rng.choice(list("ACGT"), size=n))


def make_coded_pod5(path: Path, n_reads: int = 5, *, seed: int = 0, min_len: int = 20,
                    max_len: int = 300, **kw: object) -> dict[str, str]:
    """A pod5 of reads that the level model decodes to known sequences; returns id -> seq."""
    rng = np.random.default_rng(seed)
    seqs: dict[str, str] = {}
    sigs: dict[str, np.ndarray] = {}
    for _ in range(n_reads):
        rid = str(uuid.UUID(int=int(rng.integers(0, 2**62)) << 64 | int(rng.integers(0, 2**62))))
        seq = random_seq(rng, int(rng.integers(min_len, max_len + 1)))
        seqs[rid] = seq
        sigs[rid] = encode(seq, rng)
    write_pod5(path, sigs, **kw)  # type: ignore[arg-type]
    return seqs
