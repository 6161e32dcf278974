"""Recurrent (LSTM) CRF models: a read shorter than one chunk runs at its own length.

Zero padding to the chunk size flows through a recurrent layer into every frame (on the
imported dorado R9.4.1 fast model it cut SARS-CoV-2 amplicon reads from 50/50 mapped at
0.900 to 20/50 at 0.809), so the pipeline must not pad such reads beyond the stride.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

STRIDE, STATE_LEN, HIDDEN = 6, 2, 8


def _recurrent_crf_folder(folder: Path, chunk: int = 3000, overlap: int = 300) -> Path:
    """Conv (stride) -> reverse LSTM -> MatMul -> tanh: CRF-shaped scores whose every frame
    depends on all later samples (a test fixture for the pipeline, not a model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecall.models import sha256_file, write_card_toml

    folder.mkdir(parents=True, exist_ok=True)
    classes = 4 ** STATE_LEN * 5
    rng = np.random.default_rng(3)
    arrays = {"wc": rng.normal(0, 0.5, (HIDDEN, 1, STRIDE)),
              "wi": rng.normal(0, 0.5, (1, 4 * HIDDEN, HIDDEN)),
              "wh": rng.normal(0, 0.5, (1, 4 * HIDDEN, HIDDEN)),
              "wo": rng.normal(0, 1.0, (HIDDEN, classes)), "three": np.array(3.0),
              "bc": np.full(HIDDEN, 1.5),  # zero padding still drives the LSTM
              "bl": np.concatenate([np.zeros(HIDDEN), np.full(HIDDEN, 4.0),  # long memory:
                                    np.zeros(6 * HIDDEN)])[None]}  # forget-gate bias 4
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    nodes = [helper.make_node("Conv", ["signal", "wc", "bc"], ["c"], kernel_shape=[STRIDE],
                              strides=[STRIDE]),
             helper.make_node("Transpose", ["c"], ["tnc"], perm=[2, 0, 1]),
             helper.make_node("LSTM", ["tnc", "wi", "wh", "bl"], ["y"], hidden_size=HIDDEN,
                              direction="reverse"),
             helper.make_node("Squeeze", ["y", "one"], ["y3"]),
             helper.make_node("Transpose", ["y3"], ["ntc"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["ntc", "wo"], ["mm"]),
             helper.make_node("Tanh", ["mm"], ["th"]),
             helper.make_node("Mul", ["th", "three"], ["scores"])]
    graph = helper.make_graph(
        nodes, "recurrent_crf_fixture",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "F", classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    write_card_toml(folder, {
        "name": "recurrent_crf_fixture",
        "chemistry": {"pore": "r9.4.1", "sample_rate": 4000},
        "model": {"file": "model.onnx", "alphabet": "NACGT", "stride": STRIDE,
                  "chunk_size": chunk, "overlap": overlap, "output": "crf_scores",
                  "decoder": "crf", "crf": {"state_len": STATE_LEN}},
        "normalisation": {"method": "fixed", "shift": 80.0, "scale": 15.0},
        "files": {"model.onnx": sha256_file(folder / "model.onnx")}})
    return folder


def test_short_reads_run_unpadded_through_a_recurrent_model(tmp_path: Path) -> None:
    import modelkit
    import onnxruntime as ort
    import pysam

    from edgecall.decode import decode_crf
    from edgecall.io.reader import iter_reads
    from edgecall.models import load_card
    from edgecall.pipeline import basecall
    from edgecall.signal import prepare
    from edgecall.types import Read

    folder = _recurrent_crf_folder(tmp_path / "fixture")
    rng = np.random.default_rng(9)
    lengths = (6 * 200 + 5, 6 * 320, 6 * 450 + 1, 6 * 450 + 1)  # all shorter than a chunk
    sigs = {str(uuid.UUID(int=i + 1)): (80 + 15 * rng.standard_normal(n)).astype(np.float32)
            for i, n in enumerate(lengths)}
    modelkit.write_pod5(tmp_path / "reads.pod5", sigs)
    out = tmp_path / "calls.fastq"
    summary = basecall([tmp_path / "reads.pod5"], out, model=str(folder), engine="onnx",
                       batch_size=8)
    assert summary.reads == len(lengths) and not summary.failed
    recs = {r.name: r.sequence for r in pysam.FastxFile(str(out))}
    card = load_card(folder)
    sess = ort.InferenceSession(str(card.onnx_path), providers=["CPUExecutionProvider"])
    padded_differs = 0
    for read in iter_reads([tmp_path / "reads.pod5"]):
        assert isinstance(read, Read)
        x = prepare(read, card.norm, card.sample_rate).astype(np.float32)
        n = -(-x.shape[0] // STRIDE) * STRIDE
        own = np.pad(x, (0, n - x.shape[0]))
        want = decode_crf(sess.run(None, {"signal": own[None, None]})[0][0], STATE_LEN)
        assert recs[read.read_id] == want.sequence and len(want.sequence) > 5
        full = np.pad(x, (0, card.chunk_size - x.shape[0]))
        frames = -(-x.shape[0] // STRIDE)
        padded = decode_crf(sess.run(None, {"signal": full[None, None]})[0][0][:frames],
                            STATE_LEN)
        padded_differs += padded.sequence != want.sequence
    assert padded_differs > 0  # the fixture is sensitive to padding: the test can fail
