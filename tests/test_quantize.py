"""tools.quantize: QDQ PTQ, per-channel weights, mixed precision, QAT export, bad inputs."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import modelkit  # noqa: E402

from edgecall.errors import ChemistryMismatch, InputError, ModelError  # noqa: E402
from tools import quantize as Q  # noqa: E402
from tools.__main__ import main as tools_main  # noqa: E402
from tools.arch import ArchConfig, Student  # noqa: E402
from tools.compress import export_onnx, fold, load_chunks  # noqa: E402

pytestmark = pytest.mark.tools


def _folded(seed: int = 0):  # noqa: ANN202 - FoldedNet
    """A small folded student with peaky outputs."""
    torch.manual_seed(seed)
    m = Student(ArchConfig(channels=16, depth=2, kernel=9, stem_kernel=9, skips=False))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        m.head.weight.mul_(8)
    return fold(m.eval())


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(_folded(), tmp_path_factory.mktemp("q") / "fp32.onnx", length=300)


def _chunks(n: int = 24, t: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t)).astype(np.float32)


def _weight_scales(path: Path) -> dict[int, tuple[int, ...]]:
    """Shape of the DequantizeLinear scale feeding each Conv's weight input, keyed by
    the conv's position among the graph's convs (the quantiser's output has short names)."""
    g = onnx.load(str(path)).graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out = {}
    for i, n in enumerate(n for n in g.node if n.op_type == "Conv"):
        if n.input[1] in producer:
            dq = producer[n.input[1]]
            if dq.op_type == "DequantizeLinear":
                out[i] = tuple(inits[dq.input[1]].dims)
    return out


def test_quantised_file_has_compact_names(fp32: Path, tmp_path: Path) -> None:
    q = Q.ptq(fp32, tmp_path / "q.onnx", _chunks())
    g = onnx.load(str(q)).graph
    assert [v.name for v in g.input] == ["signal"] and [v.name for v in g.output] == ["logprobs"]
    assert all(len(i.name) <= 6 for i in g.initializer)  # t0, t1, ...
    long = Q.ptq(fp32, tmp_path / "long.onnx", _chunks(), compact=False)
    assert q.stat().st_size < long.stat().st_size
    held = _chunks(4, seed=9)
    np.testing.assert_array_equal(Q.run_onnx(q, held), Q.run_onnx(long, held))


@pytest.mark.parametrize("method", Q.CALIBRATION)
def test_ptq_qdq_per_channel_close_to_fp32(fp32: Path, tmp_path: Path, method: str) -> None:
    q = Q.ptq(fp32, tmp_path / "q.onnx", _chunks(), method=method)
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    scales = _weight_scales(q)
    assert len(scales) == len(Q.conv_nodes(fp32))  # every conv quantised
    assert all(s[0] > 1 for s in scales.values())  # per-channel scales
    held = _chunks(8, seed=5)
    stats = Q.compare(Q.run_onnx(fp32, held), Q.run_onnx(q, held))
    assert stats["label_agreement"] > 0.9
    assert 0 < stats["max_abs"] < 2.0


def test_mixed_precision_keeps_first_and_last_fp32(fp32: Path, tmp_path: Path) -> None:
    keep = Q.first_last(fp32)
    names = Q.conv_nodes(fp32)
    assert keep == [names[0], names[-1]]
    q = Q.ptq(fp32, tmp_path / "mixed.onnx", _chunks(), exclude=keep)
    assert set(_weight_scales(q)) == set(range(1, len(names) - 1))


def test_sensitivity_one_row_per_conv(fp32: Path) -> None:
    rows = Q.sensitivity(fp32, _chunks(8))
    assert [r["node"] for r in rows] == Q.conv_nodes(fp32)
    assert all(r["kl"] >= 0 and 0 <= r["label_agreement"] <= 1 for r in rows)
    assert any(r["kl"] > 0 for r in rows)
    assert len(Q.most_sensitive(rows, 2)) == 2


def test_qat_export_agrees_with_fake_quant_torch(tmp_path: Path) -> None:
    net = _folded(1)
    teacher = copy.deepcopy(net)
    chunks = _chunks(32)
    Q.qat(net, teacher, chunks, steps=4, batch_size=8)
    assert all(r[2] for r in net.qat_ranges)
    q = Q.export_qat(net, tmp_path / "qat.onnx", chunks, length=300)
    held = _chunks(8, seed=7)
    with torch.no_grad():
        fake = net(torch.from_numpy(held[:, None])).numpy()
        plain = Q.strip_fake_quant(net)(torch.from_numpy(held[:, None])).numpy()
    got = Q.run_onnx(q, held)
    to_fake = Q.compare(fake, got)
    assert to_fake["label_agreement"] > 0.95 and to_fake["max_abs"] < 1.0
    assert np.abs(fake - plain).max() > 0  # fake quantisation really acted


def test_bad_inputs_give_clear_errors(fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="calibration set is empty"):
        Q.ptq(fp32, tmp_path / "q.onnx", np.zeros((0, 300), np.float32))
    with pytest.raises(ModelError, match="no such ONNX model"):
        Q.ptq(tmp_path / "nope.onnx", tmp_path / "q.onnx", _chunks())
    with pytest.raises(ValueError, match="unknown calibration"):
        Q.ptq(fp32, tmp_path / "q.onnx", _chunks(), method="magic")


def test_wrong_chemistry_and_empty_data(tmp_path: Path) -> None:
    pod5 = tmp_path / "r10.pod5"
    rng = np.random.default_rng(0)
    modelkit.write_pod5(pod5, {str(uuid.UUID(int=1)): 90 + 10 * rng.standard_normal(5000)},
                        flow_cell="FLO-PRO114M", kit="SQK-LSK114")
    with pytest.raises(ChemistryMismatch, match="r10.4.1 .*model is for r9.4.1"):
        load_chunks([pod5], chunk_size=600, pore="r9.4.1")
    assert load_chunks([pod5], chunk_size=600, pore="r10.4.1").shape == (9, 600)  # last ends at n
    with pytest.raises(InputError, match="no calibration chunks"):
        load_chunks([pod5], chunk_size=6000)


def test_cli_one_line_errors(fp32: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "q.onnx")
    assert tools_main(["quantize", str(tmp_path / "none"), "--data", "x.pod5",
                       "--out", out]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such model" in err
    assert tools_main(["quantize", str(fp32), "--data", str(tmp_path / "missing.pod5"),
                       "--out", out]) == 1
    assert "missing.pod5: no such file" in capsys.readouterr().err


def test_cli_ptq_with_mixed_precision(fp32: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    pod5 = tmp_path / "r9.pod5"
    rng = np.random.default_rng(0)
    modelkit.write_pod5(pod5, {str(uuid.UUID(int=i + 1)): 90 + 10 * rng.standard_normal(3000)
                               for i in range(4)})
    out = tmp_path / "q.onnx"
    assert tools_main(["quantize", str(fp32), "--data", str(pod5), "--chunk-size", "300",
                       "--keep-fp32", "first-last", "--out", str(out)]) == 0
    assert "fp32 kept: " in capsys.readouterr().out
    assert len(_weight_scales(out)) == len(Q.conv_nodes(fp32)) - 2


def _logp(labels: list[int], frames_per_label: int = 3) -> np.ndarray:
    """Peaky log-probs whose greedy CTC path decodes to ``labels`` (blank between)."""
    path = []
    for lab in labels:
        path += [lab] * (frames_per_label - 1) + [0]
    lp = np.full((len(path), 5), -20.0, np.float32)
    lp[np.arange(len(path)), path] = 0.0
    return lp


def test_sequence_identity_of_decoded_chunks() -> None:
    from tools.compress import sequence_identity

    seq = [1, 2, 3, 4, 1, 1, 2, 3, 4, 4] * 10  # 100 labels, with repeats split by blanks
    ref = _logp(seq)[None]
    assert sequence_identity(ref, ref.copy()) == 1.0
    sub = list(seq)
    sub[10] = 4 if sub[10] != 4 else 3
    del sub[50]  # one substitution and one deletion
    assert sequence_identity(ref, _logp(sub)[None]) == pytest.approx(1 - 2 / 100)


def test_fp32_export_is_held_to_the_torch_model(tmp_path: Path) -> None:
    from tools.compress import check_fp32_export, onnx_vs_torch

    net, other = _folded(0), _folded(1)
    chunks = _chunks(8)
    path = export_onnx(net, tmp_path / "a.onnx", length=300, check=chunks)  # passes
    stats = onnx_vs_torch(path, net, chunks)
    assert stats["max_abs"] < 1e-4 and stats["sequence_identity"] == 1.0
    bad = onnx_vs_torch(path, other, chunks)  # the file is not this network
    with pytest.raises(ModelError, match="export differs from the PyTorch model"):
        check_fp32_export(bad, str(path))
