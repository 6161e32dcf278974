"""The TFLite engine (and, with litert-torch, the TFLite export) against onnxruntime.

``tests/data/tflite`` holds a small random student exported once by
``tools/compress.export_onnx`` and ``tools/tflite_export.export_tflite``
(fixed input [4, 1, 600]) so the engine is tested without the converter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
try:
    from edgecall.engines.tflite import load_interpreter_class

    load_interpreter_class()
except Exception as exc:  # noqa: BLE001 - no LiteRT runtime: skip the module
    pytest.skip(f"no TFLite runtime: {exc}", allow_module_level=True)

from edgecall.engines import create  # noqa: E402
from edgecall.engines.onnx import OnnxEngine  # noqa: E402
from edgecall.engines.tflite import TFLiteEngine, tflite_path  # noqa: E402
from edgecall.errors import ModelError  # noqa: E402
from edgecall.models import load_card  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "data" / "tflite"


@pytest.fixture(scope="module")
def card():  # noqa: ANN201 - ModelCard
    """The fixture model's card."""
    return load_card(FIXTURE)


def _batch(n: int, t: int = 600, seed: int = 0) -> np.ndarray:
    """Standard-normal signal [n, 1, t]."""
    return np.random.default_rng(seed).standard_normal((n, 1, t)).astype(np.float32)


def test_fp32_matches_onnxruntime(card) -> None:  # noqa: ANN001
    x = _batch(4)
    ref = OnnxEngine(card.onnx_path, threads=1).run(x)
    out = create("tflite", card, threads=1).run(x)
    assert out.shape == ref.shape == (4, 200, 5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_int8_full_integer_close_to_onnxruntime(card) -> None:  # noqa: ANN001
    eng = TFLiteEngine.from_model(card, threads=1, variant="int8")
    assert eng.input_dtype == np.int8  # full-integer graph: the engine quantises the input
    x = _batch(4, seed=1)
    ref = OnnxEngine(card.onnx_path, threads=1).run(x)
    out = eng.run(x)
    assert np.abs(out - ref).max() < 0.5
    assert (out.argmax(-1) == ref.argmax(-1)).mean() > 0.95
    assert np.abs(out - ref).max() > 0  # really quantised, not the FP32 file


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_any_batch_size_padded_or_split(card, n: int) -> None:  # noqa: ANN001
    eng = TFLiteEngine.from_model(card, threads=1)
    x = _batch(n, seed=n)
    out = eng.run(x)
    ref = OnnxEngine(card.onnx_path, threads=1).run(x)
    assert out.shape == (n, 200, 5)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # rows are independent of what they were batched with
    np.testing.assert_allclose(eng.run(x[:1]), out[:1], atol=1e-6)


def test_other_chunk_length_is_a_clear_error(card) -> None:  # noqa: ANN001
    eng = TFLiteEngine.from_model(card, threads=1)
    with pytest.raises(ModelError, match="exported for chunks of 600 samples"):
        eng.run(_batch(2, t=900))
    assert eng.run(_batch(2)).shape == (2, 200, 5)  # still usable afterwards


def test_bad_input_shape_rejected(card) -> None:  # noqa: ANN001
    eng = TFLiteEngine.from_model(card, threads=1)
    with pytest.raises(ValueError, match=r"\[N, 1, T\]"):
        eng.run(np.zeros((2, 600), np.float32))


def test_missing_variant_and_file_errors(card, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="no 'fp16' variant"):
        tflite_path(card, "fp16")
    (tmp_path / "card.toml").write_text((FIXTURE / "card.toml").read_text())
    with pytest.raises(ModelError, match="model.tflite is missing"):
        TFLiteEngine.from_model(load_card(tmp_path))
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelError, match="cannot load the model"):
        TFLiteEngine(tmp_path / "model.tflite")


# --------------------------------------------------------------------------- export

def _can_export() -> bool:
    """litert-torch here, or an interpreter with it in EDGECALL_LITERT_PYTHON."""
    try:
        from tools.tflite_export import have_litert_torch
    except ImportError:
        return False
    py = os.environ.get("EDGECALL_LITERT_PYTHON", "")
    return have_litert_torch() or bool(py and Path(py).is_file())


@pytest.mark.tools
@pytest.mark.slow
@pytest.mark.skipif(not _can_export(), reason="litert-torch not installed "
                    "(pip install 'edgecall[tflite-export]' or set EDGECALL_LITERT_PYTHON)")
def test_export_fp32_and_int8_agree_with_torch(tmp_path: Path) -> None:
    import torch

    from tools.arch import ArchConfig, Student
    from tools.compress import fold
    from tools.tflite_export import check_tflite, export_tflite

    torch.manual_seed(0)
    net = fold(Student(ArchConfig(channels=16, depth=2, kernel=9, skips=False)).eval())
    chunks = _batch(8, t=300)[:, 0]
    with torch.no_grad():
        ref = net(torch.from_numpy(chunks[:, None])).numpy()
    fp = export_tflite(net, tmp_path / "m.tflite", batch=4, length=300)
    stats = check_tflite(fp, ref, chunks)
    assert stats["max_abs"] < 1e-4
    q = export_tflite(net, tmp_path / "m.int8.tflite", batch=4, length=300, int8=True,
                      chunks=chunks)
    stats = check_tflite(q, ref, chunks)
    assert stats["label_agreement"] > 0.9 and stats["max_abs"] > 0


def test_export_int8_needs_calibration(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tools.tflite_export import export_tflite

    with pytest.raises(ValueError, match="calibration chunks"):
        export_tflite(torch.nn.Identity(), tmp_path / "x.tflite", int8=True, chunks=None)
