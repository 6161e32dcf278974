"""The native engine against onnxruntime on the same ONNX files (fp32 and QDQ int8).

Tolerances: fp32 log-probs within 1e-4 (max abs) of onnxruntime; int8 within
1e-4 of onnxruntime's reference QDQ semantics (graph optimisations off: our
integer kernels implement QDQ exactly), and decoded sequences identical for
>= 99.5% of bases against onnxruntime's optimised int8 path on real reads.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import pytest

from edgecall import kernels_backend as kb
from edgecall.errors import UnsupportedGraph

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecall.engines.native import NativeEngine  # noqa: E402

try:
    kb.kernels(pure=False)
except kb.KernelsMissing as exc:  # pragma: no cover - depends on the build
    pytest.skip(f"compiled kernels not built: {exc}", allow_module_level=True)

C = 12  # channels of the tiny graph


def _bn(name: str, c: int, rng: np.random.Generator) -> list:
    """Initializers for a BatchNormalization with non-trivial statistics."""
    vals = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
            rng.uniform(0.5, 2.0, c)]
    return [numpy_helper.from_array(v.astype(np.float32), f"{name}_{s}")
            for v, s in zip(vals, ("g", "b", "m", "v"), strict=True)]


def make_tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A small student-like graph touching every supported float op."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name: str, *shape: int, scale: float = 0.4) -> str:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def bn(x: str, out: str, c: int) -> None:
        inits.extend(_bn(out, c, rng))
        nodes.append(helper.make_node("BatchNormalization",
                                      [x, f"{out}_g", f"{out}_b", f"{out}_m", f"{out}_v"], [out]))

    nodes.append(helper.make_node("Conv", ["signal", w("stem_w", C, 1, 9, scale=0.6)], ["s0"],
                                  strides=[3], pads=[4, 4], kernel_shape=[9]))
    bn("s0", "s1", C)
    nodes.append(helper.make_node("Relu", ["s1"], ["h0"]))
    # block 1: depthwise -> BN -> pointwise -> BN -> +residual -> ReLU
    nodes.append(helper.make_node("Conv", ["h0", w("dw1", C, 1, 7)], ["d1"], group=C,
                                  pads=[3, 3], kernel_shape=[7]))
    bn("d1", "d1b", C)
    nodes.append(helper.make_node("Conv", ["d1b", w("pw1", C, C, 1, scale=0.3)], ["p1"]))
    bn("p1", "p1b", C)
    nodes.append(helper.make_node("Add", ["p1b", "h0"], ["r1"]))
    nodes.append(helper.make_node("Relu", ["r1"], ["h1"]))
    # block 2: depthwise with bias -> pointwise -> Clip(0, 6) (ReLU6)
    nodes.append(helper.make_node("Conv", ["h1", w("dw2", C, 1, 5), w("dw2b", C)], ["d2"],
                                  group=C, pads=[2, 2], kernel_shape=[5]))
    nodes.append(helper.make_node("Conv", ["d2", w("pw2", C, C, 1, scale=0.3), w("pw2b", C)],
                                  ["p2"]))
    inits += [numpy_helper.from_array(np.float32(0.0), "zero"),
              numpy_helper.from_array(np.float32(6.0), "six")]
    nodes.append(helper.make_node("Clip", ["p2", "zero", "six"], ["h2"]))
    # block 3: grouped conv (2 groups) -> SiLU as Sigmoid * Mul
    nodes.append(helper.make_node("Conv", ["h2", w("g3", C, C // 2, 3, scale=0.3)], ["g3o"],
                                  group=2, pads=[1, 1], kernel_shape=[3]))
    nodes.append(helper.make_node("Sigmoid", ["g3o"], ["g3s"]))
    nodes.append(helper.make_node("Mul", ["g3o", "g3s"], ["h3"]))
    # head: Transpose -> MatMul + bias -> LogSoftmax
    nodes.append(helper.make_node("Transpose", ["h3"], ["t"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("MatMul", ["t", w("head_w", C, 5)], ["logits0"]))
    nodes.append(helper.make_node("Add", ["logits0", w("head_b", 5)], ["logits"]))
    nodes.append(helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=-1))
    graph = helper.make_graph(
        nodes, "tiny_student",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["N", "F", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _ort(path: Path, x: np.ndarray, optimise: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"signal": x})[0]


def _signal(n: int, t: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("native") / "tiny.onnx")


def _quantize(src: Path, dst: Path, activations: str, batches: int) -> Path:
    """QDQ per-channel INT8 copy of ``src`` calibrated on ``batches`` random batches."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"signal": _signal(2, 300, seed)} for seed in range(batches)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    act = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=act, weight_type=QuantType.QInt8)
    return dst


@pytest.fixture(scope="module")
def tiny_int8(tiny: Path) -> Path:
    return _quantize(tiny, tiny.with_name("tiny.int8.onnx"), "int8", 4)


@pytest.mark.parametrize("n,t", [(1, 3), (2, 300), (3, 603), (5, 90)])
def test_fp32_matches_onnxruntime(tiny: Path, n: int, t: int) -> None:
    x = _signal(n, t)
    ours = NativeEngine(tiny, threads=2).run(x)
    ref = _ort(tiny, x)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


def test_fusion_and_buffer_reuse(tiny: Path) -> None:
    eng = NativeEngine(tiny, threads=1)
    text = eng.describe()
    lines = text.splitlines()  # BN, bias, ReLU/Clip/SiLU and the residual all fused
    assert len(lines) == 6 and sum(line.startswith("conv[") for line in lines) == 5
    assert lines[0].startswith("conv[stem") and "act=1" in lines[0]
    assert "depthwise+pointwise" in lines[1] and "+res" in lines[1]  # dw -> pw in one pass
    assert "depthwise+pointwise" in lines[2] and "act=2" in lines[2]
    assert lines[3].startswith("conv[generic") and "act=3" in lines[3]
    bufs = set(eng.program.buffer_of.values())
    assert len(bufs) < len(eng.program.buffer_of)  # liveness shares buffers
    x = _signal(2, 300)
    first = eng.run(x)
    eng.run(_signal(2, 300, seed=7))
    np.testing.assert_array_equal(eng.run(x), first)  # no state leaks between runs
    two = NativeEngine(tiny, threads=2)  # batch split over two workers
    np.testing.assert_allclose(two.run(_signal(5, 300)), eng.run(_signal(5, 300)), atol=1e-6)
    assert two.run(np.zeros((0, 1, 300), np.float32)).shape == (0, 100, 5)
    two.close()
    assert two.run(x).shape == first.shape


def test_int8_matches_qdq_reference_exactly(tiny_int8: Path) -> None:
    eng = NativeEngine(tiny_int8, threads=2)
    assert eng.quantized and "qpointwise" in eng.describe() and "qdepthwise" in eng.describe()
    x = _signal(3, 600, seed=11)
    ours = eng.run(x)
    assert np.abs(ours - _ort(tiny_int8, x, optimise=False)).max() < 1e-4
    # onnxruntime's fused int8 kernels (x86 without VNNI) drift from its own QDQ
    # semantics; ours must stay at least as close to the fp32 model as they do
    fp32 = _ort(tiny_int8.with_name("tiny.onnx"), x).argmax(-1)
    ours_agree = (ours.argmax(-1) == fp32).mean()
    assert ours_agree >= (_ort(tiny_int8, x).argmax(-1) == fp32).mean()
    assert ours_agree > 0.9


def test_uint8_activations_match_qdq_reference(tiny: Path) -> None:
    # U8S8: onnxruntime's fast int8 flavour on x86
    u8 = _quantize(tiny, tiny.with_name("tiny.u8.onnx"), "uint8", 3)
    x = _signal(2, 450, seed=5)
    eng = NativeEngine(u8, threads=2)
    assert eng.quantized
    assert np.abs(eng.run(x) - _ort(u8, x, optimise=False)).max() < 1e-4


def test_pure_python_backend_gives_same_results(tiny: Path, tiny_int8: Path) -> None:
    x = _signal(2, 150, seed=3)
    for path, tol in ((tiny, 1e-5), (tiny_int8, 1e-6)):
        fast = NativeEngine(path, threads=2).run(x)
        slow = NativeEngine(path, threads=1, pure=True).run(x)
        assert NativeEngine(path, pure=True).kern.name == "numpy"
        assert np.abs(fast - slow).max() <= tol


def test_env_var_selects_numpy_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECALL_PURE_PYTHON", "1")
    assert kb.kernels().name == "numpy"
    monkeypatch.delenv("EDGECALL_PURE_PYTHON")
    assert kb.kernels().name == "compiled"


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    nodes = [helper.make_node("Conv", ["signal", "w"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Tanh", ["c"], ["h"], name="odd_tanh"),
             helper.make_node("Transpose", ["h"], ["logprobs"], perm=[0, 2, 1])]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["N", "T", 5])],
        [numpy_helper.from_array(np.ones((5, 1, 3), np.float32), "w")])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedGraph, match=r"bad\.onnx.*op Tanh \(node 'odd_tanh'\)"):
        NativeEngine(path)


def test_engines_create_native(tmp_path: Path) -> None:
    from modelkit import make_test_model

    from edgecall.engines import create
    from edgecall.models import load_card

    card = load_card(make_test_model(tmp_path / "m"))
    eng = create("native", card, threads=1)
    x = _signal(2, 400)
    assert eng.name == "native"
    assert np.abs(eng.run(x) - _ort(card.onnx_path, x)).max() < 1e-4


# ---- the real student architecture (torch export) and real reads -------------


def _student_onnx(folder: Path) -> tuple[Path, Path]:
    """Export tools.arch.Student (default config, random weights) + a QDQ int8 copy."""
    torch = pytest.importorskip("torch")
    from tools.arch import ArchConfig, Student

    torch.manual_seed(0)
    model = Student(ArchConfig(channels=64, depth=4, skips=True)).eval()
    fp32 = folder / "student.onnx"
    torch.onnx.export(model, torch.randn(1, 1, 900), str(fp32), input_names=["signal"],
                      output_names=["logprobs"], opset_version=17, dynamo=False,
                      dynamic_axes={"signal": {0: "N", 2: "T"}, "logprobs": {0: "N", 1: "F"}})
    return fp32, folder / "student.int8.onnx"


@pytest.mark.tools
def test_student_export_matches_onnxruntime(tmp_path: Path) -> None:
    fp32, _ = _student_onnx(tmp_path)
    x = _signal(2, 1800)
    assert np.abs(NativeEngine(fp32, threads=2).run(x) - _ort(fp32, x)).max() < 1e-4


def _real_chunks(shared: Path, n_chunks: int = 24, size: int = 3600) -> np.ndarray:
    """Normalised chunks from the real R9.4.1 E. coli reads."""
    pod5 = pytest.importorskip("pod5")
    from edgecall.signal import Normalisation, normalise

    chunks = []
    for path in sorted((shared / "r9.4.1" / "ecoli").glob("*.pod5")):
        with pod5.Reader(path) as reader:
            for rec in reader.reads():
                x = normalise(rec.signal_pa, Normalisation(clip=5.0))
                for s in range(0, x.size - size, size * 4):
                    chunks.append(x[s:s + size])
                if len(chunks) >= n_chunks:
                    return np.stack(chunks[:n_chunks])[:, None, :]
    if not chunks:
        pytest.skip("no E. coli reads in the shared data")
    return np.stack(chunks)[:, None, :]


def _shared() -> Path:
    env = os.environ.get("EDGECALL_SHARED_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not p.is_dir():
        pytest.skip(f"real data not found at {p} (set EDGECALL_SHARED_DATA)")
    return p


def _bases_identical(a: str, b: str) -> int:
    """Bases of ``a`` in blocks identical to ``b`` (difflib matching blocks)."""
    return sum(m.size for m in difflib.SequenceMatcher(None, a, b, autojunk=False)
               .get_matching_blocks())


@pytest.mark.realdata
@pytest.mark.tools
@pytest.mark.slow
def test_int8_decodes_like_onnxruntime_on_real_reads(tmp_path: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from edgecall.decode import decode

    chunks = _real_chunks(_shared())
    fp32, int8 = _student_onnx(tmp_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"signal": chunks[i:i + 4]} for i in range(0, 8, 4)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    test = chunks[8:]
    ours, ref = NativeEngine(int8, threads=2).run(test), _ort(int8, test)
    total = same = 0
    for a, b in zip(ours, ref, strict=True):
        sa, sb = decode(a).sequence, decode(b).sequence
        total += max(len(sa), len(sb))
        same += _bases_identical(sa, sb)
    assert total > 1000
    assert same / total >= 0.995, f"only {same / total:.4f} of bases identical"


def test_supports(tmp_path: Path, tiny: Path) -> None:
    from modelkit import make_test_model

    from edgecall.engines.native import supports
    from edgecall.models import load_card

    card = load_card(make_test_model(tmp_path / "m"))
    assert supports(card) and not supports(card, "int8")  # no int8 variant
    (card.folder / "model.onnx").write_bytes(b"not onnx")
    assert not supports(card)


def test_auto_engine_rule_recognises_int8_qdq_files(tiny: Path, tiny_int8: Path,
                                                    tmp_path: Path) -> None:
    from edgecall.engines import is_qdq

    assert is_qdq(tiny_int8) and not is_qdq(tiny)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert not is_qdq(bad)  # the engine, not the rule, reports a broken file
