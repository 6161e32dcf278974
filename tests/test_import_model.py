"""tools import-model: torch file parsing, the dorado/bonito builders, ONNX export, the card.

Real-data tests read ``../shared/data`` in place (skipped without it); synthetic weights
for the R10.4.1 configs are written to ``tmp_path`` only, as fixtures, never models.
"""

from __future__ import annotations

import itertools
import pickle
import shutil
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgecall.errors import EdgecallError, ModelError  # noqa: E402
from tools.__main__ import main as tools_main  # noqa: E402
from tools.teachers.bonito_ctc import build_ctc_model  # noqa: E402
from tools.teachers.crfcheck import greedy_ctc, viterbi  # noqa: E402
from tools.teachers.dorado import config_tensor_shapes  # noqa: E402
from tools.teachers.importer import (  # noqa: E402
    check_export,
    export_onnx,
    import_model,
    load_model_folder,
    ort_run,
    ort_session,
    torch_run,
)
from tools.teachers.torchfile import (  # noqa: E402
    load_state_dict,
    load_tensor,
    load_tensor_folder,
)

pytestmark = pytest.mark.tools

V34 = "r9.4.1/teacher/dorado_fast_v3.4"
TARGETCALL = "r9.4.1/peers/targetcall"
R10_CONFIGS = "r10.4.1/dorado_model_configs"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread: LSTMs on a busy 2-core machine otherwise spin for minutes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- helpers

def _save_tensor(path: Path, t: torch.Tensor) -> None:
    """A dorado-style .tensor file: a TorchScript module whose attribute "0" is ``t``."""

    class Holder(torch.nn.Module):
        def __init__(self, value: torch.Tensor) -> None:
            super().__init__()
            self.register_parameter("0", torch.nn.Parameter(value, requires_grad=False))

        def forward(self) -> int:
            return 0

    torch.jit.save(torch.jit.script(Holder(t)), str(path))


def _write_synthetic(folder: Path, cfg_text: str, *, seed: int = 0,
                     wrong: str | None = None) -> Path:
    """``folder`` with ``cfg_text`` and random .tensor files of the configured shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(cfg_text)
    rng = np.random.default_rng(seed)
    for name, shape in config_tensor_shapes(tomllib.loads(cfg_text)).items():
        if name == wrong:
            shape = (*shape[:-1], shape[-1] + 1)
        std = 1 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1  # torch-like init
        arr = rng.normal(0, std, shape).astype(np.float32)
        _save_tensor(folder / f"{name}.tensor", torch.from_numpy(arr))
    return folder


SMALL_CFG = """
[model]
package = "bonito.crf"
[labels]
labels = ["N", "A", "C", "G", "T"]
[input]
features = 1
[global_norm]
state_len = 2
[encoder]
stride = 3
winlen = 9
scale = 5.0
features = 8
rnn_type = "lstm"
activation = "swish"
blank_score = 2.0
"""


def _corona_reads(shared: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` int16 signals of the corona pod5."""
    pod5 = pytest.importorskip("pod5")
    with pod5.Reader(shared / "r9.4.1/corona/reads.pod5") as reader:
        return [rec.signal.copy() for rec in itertools.islice(reader.reads(), n)]


# ------------------------------------------------------------- FORMAT.md numpy reference

def _ref_norm(raw: np.ndarray) -> np.ndarray:
    """slorado's scale_signal on int16 samples."""
    x = raw.astype(np.float32)
    med = np.median(x)
    return (x - med) / max(1.0, 1.4826 * float(np.median(np.abs(x - med))))


def _ref_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Conv1d (C, T) by sliding windows."""
    v = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (pad, pad))),
                                                 w.shape[2], axis=1)[:, ::stride]
    return np.einsum("ctk,ock->ot", v, w) + b[:, None]


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _ref_lstm(x: np.ndarray, w_ih, w_hh, b_ih, b_hh, reverse: bool) -> np.ndarray:
    """One LSTM layer, gate order i f g o, zero state, optionally backwards in time."""
    x = x[::-1] if reverse else x
    gx = x @ w_ih.T + b_ih + b_hh
    hsz = w_hh.shape[1]
    h, c = np.zeros(hsz, np.float32), np.zeros(hsz, np.float32)
    out = np.empty((len(x), hsz), np.float32)
    for t in range(len(x)):
        g = gx[t] + w_hh @ h
        c = _sig(g[hsz:2 * hsz]) * c + _sig(g[:hsz]) * np.tanh(g[2 * hsz:3 * hsz])
        h = _sig(g[3 * hsz:]) * np.tanh(c)
        out[t] = h
    return out[::-1] if reverse else out


def _ref_scores(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """FORMAT.md's forward pass on a normalised read -> (frames, 320)."""
    h = x[None]
    for i, (stride, pad) in enumerate([(1, 2), (1, 2), (6, 9)]):
        h = _ref_conv(h, w[f"{i}.conv.weight"], w[f"{i}.conv.bias"], stride, pad)
        h = h * _sig(h)
    h = h.T
    for i, rev in zip(range(4, 9), (1, 0, 1, 0, 1), strict=True):
        h = _ref_lstm(h, w[f"{i}.rnn.weight_ih_l0"], w[f"{i}.rnn.weight_hh_l0"],
                      w[f"{i}.rnn.bias_ih_l0"], w[f"{i}.rnn.bias_hh_l0"], bool(rev))
    s = np.tanh(h @ w["9.linear.weight"].T + w["9.linear.bias"]) * 5.0
    blank = np.full((len(s), 64, 1), 2.0, np.float32)
    return np.concatenate([blank, s.reshape(-1, 64, 4)], axis=2).reshape(len(s), 320)


# --------------------------------------------------------------------------- torch files

def test_state_dict_roundtrip(tmp_path: Path) -> None:
    """torch.save state dicts (offsets, strides, int64 scalars) read back with numpy."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"a": base[1:, ::2], "b": base.t(), "n": torch.tensor(7), "h": torch.ones(3).half()}
    torch.save(sd, tmp_path / "weights_1.tar")
    got = load_state_dict(tmp_path / "weights_1.tar")
    for key, val in sd.items():
        np.testing.assert_array_equal(got[key], val.numpy())
    _save_tensor(tmp_path / "x.tensor", base[:, 2:])
    np.testing.assert_array_equal(load_tensor(tmp_path / "x.tensor"), base[:, 2:].numpy())


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    """A pickle naming any other global (here builtins.print) is one clear error."""
    path = tmp_path / "evil.tar"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": print}, protocol=2))
    with pytest.raises(ModelError, match=r"refusing to unpickle \w+\.print"):
        load_state_dict(path)
    (tmp_path / "junk.tensor").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a torch zip archive"):
        load_tensor(tmp_path / "junk.tensor")


@pytest.mark.realdata
def test_real_tensor_shapes(shared_data: Path) -> None:
    """The 28 tensors of dorado fast v3.4 parse with FORMAT.md's shapes."""
    w = load_tensor_folder(shared_data / V34)
    assert len(w) == 28
    assert sum(a.size for a in w.values()) == 732_904
    assert w["0.conv.weight"].shape == (4, 1, 5)
    assert w["2.conv.weight"].shape == (128, 16, 19)
    assert all(w[f"{i}.rnn.weight_hh_l0"].shape == (512, 128) for i in range(4, 9))
    assert w["9.linear.weight"].shape == (256, 128)
    assert all(a.dtype == np.float32 for a in w.values())


# --------------------------------------------------------------------------- CRF models

@pytest.mark.realdata
def test_scores_equal_numpy_reference(shared_data: Path) -> None:
    """The built network equals FORMAT.md's numpy forward pass on 2 corona reads."""
    imp = load_model_folder(shared_data / V34)
    assert (imp.decoder, imp.stride, imp.state_len) == ("crf", 6, 3)
    w = load_tensor_folder(shared_data / V34)
    for raw in _corona_reads(shared_data, 2):
        x = _ref_norm(raw)
        ref = _ref_scores(w, x)
        got = torch_run(imp.model, [x])[0]
        assert got.shape == ref.shape == (-(-len(x) // 6), 320)
        assert float(np.abs(got - ref).max()) < 1e-3
        assert len(viterbi(got, 3)) > len(x) / 20  # calls a plausible number of bases


@pytest.fixture(scope="module")
def imported_v34(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dorado fast v3.4 imported into a temporary folder, checked on real corona chunks."""
    out = tmp_path_factory.mktemp("imported") / "dorado_fast_v3.4"
    import_model(shared_data / V34, out, calibrate=[shared_data / "r9.4.1/corona/reads.pod5"])
    return out


@pytest.mark.realdata
@pytest.mark.slow
def test_import_v34_card_and_onnx(imported_v34: Path, shared_data: Path) -> None:
    """The card says what the device needs; the ONNX equals torch within 1e-4."""
    card = tomllib.loads((imported_v34 / "card.toml").read_text())
    assert card["description"] == "imported from dorado_fast_v3.4 (bonito.crf)"
    assert card["chemistry"]["pore"] == "r9.4.1"
    assert card["chemistry"]["sample_rate"] == 4000
    m = card["model"]
    assert (m["stride"], m["chunk_size"], m["overlap"]) == (6, 12000, 600)
    assert (m["output"], m["decoder"], m["alphabet"]) == ("crf_scores", "crf", "NACGT")
    assert m["crf"] == {"state_len": 3, "qscore_scale": 0.8555, "qscore_bias": -0.7554}
    assert card["normalisation"] == {"method": "median_mad", "clip": 0.0}
    assert card["architecture"]["params"] == 732_904
    assert set(card["files"]) == {"model.onnx"}
    imp = load_model_folder(shared_data / V34)
    x = [_ref_norm(_corona_reads(shared_data, 1)[0])[:6000]]
    diff = np.abs(ort_run(ort_session(imported_v34 / "model.onnx"), x)[0]
                  - torch_run(imp.model, x)[0]).max()
    assert diff < 1e-4


def _r10_configs(shared: Path) -> list[Path]:
    return sorted(p for p in (shared / R10_CONFIGS).iterdir() if (p / "config.toml").is_file())


@pytest.mark.realdata
@pytest.mark.slow
def test_r10_lstm_configs_build_and_export(shared_data: Path, tmp_path: Path) -> None:
    """Every CRF-LSTM config builds with synthetic tensors; its ONNX runs with the right shape.

    Transformer and remora configs give one clear error each.
    """
    built = 0
    for src in _r10_configs(shared_data):
        cfg_text = (src / "config.toml").read_text()
        cfg = tomllib.loads(cfg_text)
        if cfg.get("model", {}).get("package") != "bonito.crf":
            with pytest.raises(ModelError, match="not a dorado/bonito basecaller"):
                load_model_folder(_fixture_folder(tmp_path, src, cfg_text))
            continue
        if "seqdist" in cfg["model"]:
            with pytest.raises(ModelError, match="transformerencoderlayer"):
                config_tensor_shapes(cfg)
            continue
        folder = _write_synthetic(tmp_path / "fixtures" / src.name, cfg_text)
        out = tmp_path / "out" / src.name
        import_model(folder, out, norm="median_mad")
        card = tomllib.loads((out / "card.toml").read_text())
        sl, stride = card["model"]["crf"]["state_len"], card["model"]["stride"]
        assert card["chemistry"]["pore"] == "r10.4.1"
        assert card["chemistry"]["sample_rate"] == (4000 if "260bps" in src.name else 5000)
        y = ort_run(ort_session(out / "model.onnx"), [np.zeros(stride * 50, np.float32)])[0]
        assert y.shape == (50, 4 ** sl * 5)
        built += 1
    assert built == 4


def _fixture_folder(tmp_path: Path, src: Path, cfg_text: str) -> Path:
    """A temporary folder holding only ``cfg_text`` as config.toml."""
    d = tmp_path / "cfg_only" / src.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(cfg_text)
    return d


@pytest.mark.realdata
def test_r10_normalisation_mapping(shared_data: Path, tmp_path: Path) -> None:
    """pa + standardisation -> fixed shift/scale; quantile -> a clear error."""
    from tools.teachers.importer import normalisation_of

    hac43 = tomllib.loads((shared_data / R10_CONFIGS / "dna_r10.4.1_e8.2_400bps_hac@v4.3.0"
                           / "config.toml").read_text())
    assert normalisation_of(hac43, "bonito.crf") == {"method": "fixed", "shift": 91.88,
                                                     "scale": 22.65, "clip": 0.0}
    quant = tomllib.loads((shared_data / R10_CONFIGS / "dna_r10.4.1_e8.2_400bps_hac@v4.2.0"
                           / "config.toml").read_text())
    with pytest.raises(ModelError, match="quantile"):
        normalisation_of(quant, "bonito.crf")


def test_synthetic_model_exports(tmp_path: Path) -> None:
    """A small pre-v4 layout builds, exports, and onnxruntime equals torch (1e-4)."""
    folder = _write_synthetic(tmp_path / "dna_r9.4.1_small", SMALL_CFG)
    imp = load_model_folder(folder)
    assert (imp.stride, imp.state_len) == (3, 2)
    path = export_onnx(imp.model, tmp_path / "m.onnx")
    x = list(np.random.default_rng(1).standard_normal((2, 999)).astype(np.float32))
    assert check_export(imp.model, path, x, tol=1e-4) < 1e-4
    assert ort_run(ort_session(path), x)[0].shape == (333, 16 * 5)


def test_bonito_state_dict_equals_dorado_tensors(tmp_path: Path) -> None:
    """The same weights as a bonito weights_N.tar (keys encoder.<i>.) build the same network."""
    dorado_dir = _write_synthetic(tmp_path / "dna_r9.4.1_a", SMALL_CFG)
    cfg = tomllib.loads(SMALL_CFG)
    named = zip(config_tensor_shapes(cfg, dorado=True), config_tensor_shapes(cfg, dorado=False),
                strict=True)
    sd = {b: torch.from_numpy(load_tensor(dorado_dir / f"{d}.tensor")) for d, b in named}
    bonito_dir = tmp_path / "dna_r9.4.1_b"
    bonito_dir.mkdir()
    (bonito_dir / "config.toml").write_text(SMALL_CFG)
    torch.save(sd, bonito_dir / "weights_1.tar")
    x = [np.random.default_rng(2).standard_normal(300).astype(np.float32)]
    a = torch_run(load_model_folder(dorado_dir).model, x)[0]
    b = torch_run(load_model_folder(bonito_dir).model, x)[0]
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- bad inputs

def test_bad_inputs_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Missing config, wrong shape, unknown layer type, non-dorado folder: one line each."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.toml"):
        load_model_folder(empty)
    wrong = _write_synthetic(tmp_path / "wrong", SMALL_CFG, wrong="9.linear.weight")
    with pytest.raises(ModelError, match=r"9.linear.weight has shape 64x9, the config says 64x8"):
        load_model_folder(wrong)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.toml").write_text(
        '[model]\npackage = "bonito.crf"\n[global_norm]\nstate_len = 2\n[encoder]\n'
        'type = "serial"\n[[encoder.sublayers]]\ntype = "mystery"\n')
    shutil.copy(wrong / "0.conv.weight.tensor", unknown)
    with pytest.raises(ModelError, match="unsupported layer type 'mystery'"):
        load_model_folder(unknown)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text("[general]\nmodel = \"something\"\n")
    with pytest.raises(ModelError, match="not a dorado/bonito basecaller"):
        load_model_folder(other)
    for folder in (empty, wrong, unknown, other, tmp_path / "missing"):
        assert tools_main(["import-model", str(folder), "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("tools import-model: error: ") and "\n" not in err
    with pytest.raises(EdgecallError):
        load_model_folder(tmp_path / "missing")


# --------------------------------------------------------------------------- CTC peers

@pytest.mark.realdata
@pytest.mark.slow
def test_targetcall_decodes_ecoli(shared_data: Path, tmp_path: Path) -> None:
    """TINYX0111 greedy calls of E. coli reads map at identity >= 0.8; ONNX equals torch."""
    from tools.data import iter_pod5
    from tools.evaluate import identity, make_aligner

    folder = shared_data / TARGETCALL / "TINYX0111"
    imp = load_model_folder(folder)
    assert (imp.decoder, imp.stride) == ("ctc", 3)
    assert sum(p.numel() for p in imp.model.parameters()) == 564_933
    reads = [r.signal for r in itertools.islice(
        iter_pod5(shared_data / "r9.4.1/ecoli/reads.pod5", "ecoli"), 3)]
    logp = torch_run(imp.model, reads)
    aligner = make_aligner(shared_data / "r9.4.1/ecoli/reference.fa.gz")
    ids = [identity(aligner, greedy_ctc(lp)) for lp in logp]
    assert np.median([i or 0.0 for i in ids]) >= 0.8
    path = export_onnx(imp.model, tmp_path / "tc.onnx", output="logprobs")
    assert check_export(imp.model, path, [reads[0][:8000]], tol=1e-4) < 1e-4


@pytest.mark.realdata
def test_targetcall_import_card(shared_data: Path, tmp_path: Path) -> None:
    """A CTC peer imports with output log_softmax, no decoder, stride 3, chunks ~4000/500.

    The device chunks at multiples of the stride: 4000/500 become 3999/501.
    """
    src = tmp_path / "TINYX3"
    shutil.copytree(shared_data / TARGETCALL / "TINYX3", src)
    with pytest.raises(ModelError, match="--pore"):
        import_model(src, tmp_path / "o1")
    import_model(src, tmp_path / "o2", pore="r9.4.1")
    card = tomllib.loads((tmp_path / "o2" / "card.toml").read_text())
    m = card["model"]
    assert (m["output"], m["stride"], m["chunk_size"], m["overlap"]) == \
        ("log_softmax", 3, 3999, 501)
    assert "decoder" not in m and "crf" not in m
    assert card["architecture"]["package"] == "bonito.ctc"
    assert card["architecture"]["params"] == 20_697


def test_ctc_builder_refuses_residuals() -> None:
    """A state dict with keys outside the no-skip layout is refused by name."""
    sd = {"encoder.encoder.0.residual.0.weight": np.zeros((4, 1, 1), np.float32)}
    with pytest.raises(ModelError, match="unsupported tensor encoder.encoder.0.residual"):
        build_ctc_model(sd, {})
