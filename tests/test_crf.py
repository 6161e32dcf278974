"""CRF decoding (imported dorado/bonito models): kernels, decode_crf, cards, engines, pipeline.

The kernels are checked against a brute-force decoder that enumerates every
state path of tiny random score tensors, the compiled kernels against the numpy
references, and the whole device path on a synthetic CRF ONNX graph (a fixed
function of the signal written by the test, not a model) and, when the shared
data is there, on dorado's fast R9.4.1 model run by a numpy forward pass
written here from its FORMAT.md.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgecall import crf_ref
from edgecall import kernels_backend as kb
from edgecall.decode import Decoded, calibrated_phred, decode_crf
from edgecall.errors import ModelError

BACKENDS = [pytest.param(True, id="numpy"), pytest.param(False, id="compiled")]


def _scores(rng: np.random.Generator, frames: int, state_len: int, sd: float = 2.0
            ) -> np.ndarray:
    """Random ``[F, 4**state_len * 5]`` float32 scores."""
    return rng.normal(0, sd, (frames, 4 ** state_len * 5)).astype(np.float32)


# ---- brute force ---------------------------------------------------------------------------

def _all_paths(scores: np.ndarray, state_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """Every state path: (start state [P], choices [P, F] (0 stay, 1+b base b), score [P],
    end-of-frame states [P, F]), in float64."""
    n, f = 4 ** state_len, scores.shape[0]
    sc = scores.reshape(f, n, 5).astype(np.float64)
    choices = np.array(list(itertools.product(range(5), repeat=f)), np.int64).reshape(-1, f)
    start = np.repeat(np.arange(n), len(choices))
    choices = np.tile(choices, (n, 1))
    st, total = start.copy(), np.zeros(len(start))
    states = np.empty_like(choices)
    for t in range(f):
        c = choices[:, t]
        moved = c > 0
        dest = np.where(moved, (st * 4 + c - 1) % n, st)
        col = np.where(moved, 1 + st // (n // 4), 0)
        total += sc[t, dest, col]
        st = dest
        states[:, t] = st
    return start, choices, total, states


def _best_path(scores: np.ndarray, state_len: int) -> tuple[list[int], list[int]]:
    """Labels and moves of the highest-scoring path."""
    _, choices, total, _ = _all_paths(scores, state_len)
    best = choices[int(np.argmax(total))]
    return [int(c) for c in best if c], [int(c > 0) for c in best]


def _sequence_scores(scores: np.ndarray, state_len: int) -> dict[tuple[int, tuple[int, ...]],
                                                                float]:
    """log-sum-exp of path scores per (start state, emitted labels)."""
    start, choices, total, _ = _all_paths(scores, state_len)
    out: dict[tuple[int, tuple[int, ...]], float] = {}
    for s0, ch, v in zip(start.tolist(), choices.tolist(), total.tolist(), strict=True):
        key = (s0, tuple(c for c in ch if c))
        out[key] = float(np.logaddexp(out.get(key, -np.inf), v))
    return out


def _emission_posteriors(scores: np.ndarray, state_len: int) -> np.ndarray:
    """[F, 5]: P(stay at t), P(move at t into a state ending in base b)."""
    _, choices, total, states = _all_paths(scores, state_len)
    w = np.exp(total - total.max())
    w /= w.sum()
    post = np.zeros((scores.shape[0], 5))
    for t in range(scores.shape[0]):
        col = np.where(choices[:, t] > 0, 1 + states[:, t] % 4, 0)
        np.add.at(post[t], col, w)
    return post


def _seq_score(table: dict[tuple[int, tuple[int, ...]], float], labels: np.ndarray) -> float:
    """Best score of a label sequence over start states."""
    key = tuple(int(x) for x in labels)
    return max(v for (_, y), v in table.items() if y == key)


# ---- kernels -------------------------------------------------------------------------------

CASES = [(1, f, seed) for f, seed in ((1, 0), (4, 1), (6, 2), (6, 3))] + \
        [(2, f, seed) for f, seed in ((2, 4), (4, 5), (5, 6))]


@pytest.mark.parametrize("pure", BACKENDS)
@pytest.mark.parametrize("state_len,frames,seed", CASES)
def test_viterbi_matches_brute_force(pure: bool, state_len: int, frames: int, seed: int) -> None:
    sc = _scores(np.random.default_rng(seed), frames, state_len)
    labels, moves = kb.kernels(pure).crf_viterbi(sc, state_len)
    want_labels, want_moves = _best_path(sc, state_len)
    assert labels.dtype == np.int32 and moves.dtype == np.uint8 and moves.shape == (frames,)
    assert labels.tolist() == want_labels and moves.tolist() == want_moves


@pytest.mark.parametrize("pure", BACKENDS)
@pytest.mark.parametrize("state_len,frames,seed", CASES)
def test_beam_finds_best_sequence_and_beats_viterbi(pure: bool, state_len: int, frames: int,
                                                    seed: int) -> None:
    """A beam wide enough to hold every hypothesis finds the best (start, sequence) score.

    Narrower beams are a heuristic: from width 5 they matched or beat Viterbi's sequence
    on 160 random cases like these (widths 1-3 lost on some), so that is checked here."""
    sc = _scores(np.random.default_rng(seed), frames, state_len)
    k = kb.kernels(pure)
    table = _sequence_scores(sc, state_len)
    best = max(table.values())
    labels, moves = k.crf_beam_search(sc, state_len, 4 ** state_len * 5 ** frames)
    assert _seq_score(table, labels) == pytest.approx(best, abs=1e-4)
    assert int(moves.sum()) == len(labels) and moves.shape == (frames,)
    vit = _seq_score(table, k.crf_viterbi(sc, state_len)[0])
    for width in (5, 8):
        got, mv = k.crf_beam_search(sc, state_len, width)
        assert _seq_score(table, got) >= vit - 1e-4
        assert int(mv.sum()) == len(got) and set(got.tolist()) <= {1, 2, 3, 4}


@pytest.mark.parametrize("pure", BACKENDS)
@pytest.mark.parametrize("state_len,frames,seed", CASES)
def test_forward_backward_posteriors(pure: bool, state_len: int, frames: int,
                                     seed: int) -> None:
    sc = _scores(np.random.default_rng(seed), frames, state_len)
    post = kb.kernels(pure).crf_forward_backward(sc, state_len)
    assert post.dtype == np.float32 and post.shape == (frames, 5)
    assert np.allclose(post.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(post, _emission_posteriors(sc, state_len), atol=1e-5)


def test_forward_backward_is_stable_on_long_reads() -> None:
    """Large scores over many frames neither overflow nor lose the posteriors."""
    rng = np.random.default_rng(7)
    sc = _scores(rng, 30000, 1, sd=40.0)
    post = kb.kernels(False).crf_forward_backward(sc, 1)
    assert np.isfinite(post).all() and np.allclose(post.sum(axis=1), 1.0, atol=1e-5)
    short = kb.kernels(False).crf_forward_backward(sc[-50:], 1)
    assert np.abs(post[-10:] - short[-10:]).max() < 1e-3  # the far past hardly matters


@pytest.mark.parametrize("state_len", [1, 2, 3])
def test_compiled_equals_numpy(state_len: int) -> None:
    rng = np.random.default_rng(10 + state_len)
    fast, slow = kb.kernels(False), kb.kernels(True)
    for frames in (0, 1, 7, 60):
        sc = _scores(rng, frames, state_len)
        for name in ("crf_viterbi",):
            a, b = getattr(fast, name)(sc, state_len), getattr(slow, name)(sc, state_len)
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        for width in (1, 5, 16):
            a, b = fast.crf_beam_search(sc, state_len, width), slow.crf_beam_search(sc, state_len,
                                                                                  width)
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert np.abs(fast.crf_forward_backward(sc, state_len)
                      - slow.crf_forward_backward(sc, state_len)).max(initial=0) < 1e-5
        assert np.abs(fast.crf_backward(sc, state_len)
                      - slow.crf_backward(sc, state_len)).max() < 1e-4


@pytest.mark.parametrize("method", ["viterbi", "beam"])
def test_decode_crf_same_on_both_backends(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    sc = _scores(np.random.default_rng(3), 120, 3, sd=3.0)
    got = {}
    for pure in ("1", "0"):
        monkeypatch.setenv("EDGECALL_PURE_PYTHON", pure)
        got[pure] = decode_crf(sc, 3, method=method, qscore_scale=0.8555, qscore_bias=-0.7554)
    a, b = got["1"], got["0"]
    assert (a.sequence, a.quality, a.mean_qscore) == (b.sequence, b.quality, b.mean_qscore)
    assert np.array_equal(a.moves, b.moves)


def test_compiled_viterbi_is_fast() -> None:
    """2,000 frames x 320 scores (a 12,000-sample read, dorado fast R9.4.1): a few ms
    (about 2 ms on one x86 core, 25x the numpy reference); loose bounds for loaded CI."""
    sc = _scores(np.random.default_rng(0), 2000, 3)
    k = kb.kernels(False)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        k.crf_viterbi(sc, 3)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    kb.kernels(True).crf_viterbi(sc, 3)
    slow = time.perf_counter() - t0
    assert min(times) < 0.2 and min(times) * 5 < slow


# ---- decode_crf ----------------------------------------------------------------------------

def _clean_scores(seq: str, state_len: int = 2, frames_per_base: int = 3) -> np.ndarray:
    """Scores that favour moving through ``seq`` (one move, then stays) by a wide margin."""
    n = 4 ** state_len
    rows = []
    st = 0
    for base in seq:
        b = "ACGT".index(base)
        dest = (st * 4 + b) % n
        row = np.full((n, 5), -4.0, np.float32)
        row[dest, 1 + st // (n // 4)] = 6.0
        rows.append(row)
        for _ in range(frames_per_base - 1):
            row = np.full((n, 5), -4.0, np.float32)
            row[dest, 0] = 6.0
            rows.append(row)
        st = dest
    return np.stack(rows).reshape(len(rows), n * 5)


@pytest.mark.parametrize("method", ["viterbi", "beam"])
def test_decode_crf_clean_sequence(method: str) -> None:
    seq = "ACGTTGCAAGGCT"
    d = decode_crf(_clean_scores(seq), 2, method=method)
    assert isinstance(d, Decoded) and d.sequence == seq
    assert d.moves.tolist() == [1, 0, 0] * len(seq)
    assert len(d.quality) == len(seq) and min(d.quality) >= chr(33 + 30)
    # calibration: q = scale * q + bias, clipped to 0..50
    low = decode_crf(_clean_scores(seq), 2, method=method, qscore_scale=0.5, qscore_bias=-3)
    assert all(ord(a) < ord(b) for a, b in zip(low.quality, d.quality, strict=True))
    assert low.mean_qscore < d.mean_qscore


def test_crf_base_probs_sum_over_the_window_between_neighbours() -> None:
    from edgecall.decode import crf_base_probs

    post = np.array([[0.1, 0.9, 0, 0, 0], [0.5, 0, 0.5, 0, 0], [0.6, 0, 0.4, 0, 0],
                     [0.2, 0, 0.1, 0.7, 0], [1.0, 0, 0, 0, 0]], np.float32)
    labels, moves = np.array([1, 2, 3]), np.array([1, 1, 0, 1, 0], np.uint8)
    # A: frames 0..0 -> 0.9; C: frames 1..2 -> 0.9; G: frames 2..4 -> 0.7
    assert np.allclose(crf_base_probs(post, labels, moves), [0.9, 0.9, 0.7])
    assert np.allclose(crf_base_probs(np.full((3, 5), 0.6, np.float32), np.array([2]),
                                      np.array([0, 1, 0], np.uint8)), [1.0])  # capped
    with pytest.raises(ValueError, match="2 labels but 1 moves"):
        crf_base_probs(post, np.array([1, 2]), np.array([1, 0, 0, 0, 0], np.uint8))


def test_calibrated_phred() -> None:
    p = np.array([0.0, 0.9, 0.99, 1.0])
    assert calibrated_phred(p).tolist() == [0, 10, 20, 50]
    assert calibrated_phred(p, 0.8555, -0.7554).tolist() == [0, 8, 16, 42]
    assert calibrated_phred(np.zeros(0)).shape == (0,)


def test_decode_crf_empty_read() -> None:
    d = decode_crf(np.zeros((0, 320), np.float32), 3)
    assert (d.sequence, d.quality, d.moves.shape, d.mean_qscore) == ("", "", (0,), 0.0)


@pytest.mark.parametrize("scores,state_len,kw,match", [
    (np.zeros((5, 319), np.float32), 3, {}, r"\[F, 320\].*state_len 3"),
    (np.zeros((2, 5, 320), np.float32), 3, {}, r"\[F, 320\]"),
    (np.zeros((5, 80), np.float32), 3, {}, r"\[F, 320\]"),
    (np.zeros((5, 20), np.float32), 0, {}, "state_len must be"),
    (np.zeros((5, 20), np.float32), 1.0, {}, "state_len must be"),
    (np.zeros((5, 20), np.float32), 1, {"method": "greedy"}, "unknown CRF decoder"),
    (np.zeros((5, 20), np.float32), 1, {"method": "beam", "beam_width": 0}, "beam width"),
    (np.full((5, 20), np.nan, np.float32), 1, {}, "NaN"),
])
def test_decode_crf_rejects_bad_input(scores: np.ndarray, state_len: int, kw: dict,
                                      match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_crf(scores, state_len, **kw)


@pytest.mark.parametrize("pure", BACKENDS)
def test_kernels_reject_bad_width(pure: bool) -> None:
    k = kb.kernels(pure)
    with pytest.raises(ValueError, match=r"\[F, 80\]"):
        k.crf_viterbi(np.zeros((3, 81), np.float32), 2)
    with pytest.raises(ValueError, match="beam width"):
        k.crf_beam_search(np.zeros((3, 80), np.float32), 2, 0)


# ---- model cards ---------------------------------------------------------------------------

def _card(model_extra: dict, crf: dict | None = None) -> dict:
    """A card dict for an imported CRF model (model file not needed to load the card)."""
    model = {"file": "model.onnx", "alphabet": "NACGT", "stride": 6, "chunk_size": 1200,
             "overlap": 120, "output": "crf_scores", "decoder": "crf", **model_extra}
    if crf is not None:
        model["crf"] = crf
    return {"name": "crf_fixture", "chemistry": {"pore": "r9.4.1", "sample_rate": 4000},
            "model": model}


def test_card_reads_crf_keys(tmp_path: Path) -> None:
    from edgecall.models import CrfSpec, load_card, write_card_toml

    write_card_toml(tmp_path, _card({}, {"state_len": 3, "qscore_scale": 0.8555,
                                         "qscore_bias": -0.7554}))
    card = load_card(tmp_path)
    assert card.decoder == "crf" and card.output == "crf_scores"
    assert card.crf == CrfSpec(3, 0.8555, -0.7554) and card.crf.classes == 320
    write_card_toml(tmp_path, _card({}, {"state_len": 2}))
    assert load_card(tmp_path).crf == CrfSpec(2, 1.0, 0.0)


def test_card_defaults_to_ctc(tiny_model: Path) -> None:
    from edgecall.models import load_card

    card = load_card(tiny_model)
    assert card.decoder == "ctc" and card.crf is None


@pytest.mark.parametrize("model_extra,crf,match", [
    ({"decoder": "rnnt"}, {"state_len": 3}, r"model\.decoder \('rnnt'"),
    ({"output": "log_softmax"}, {"state_len": 3}, r"model\.output .*needs crf_scores"),
    ({"decoder": "ctc"}, None, r"model\.output \('crf_scores'.*log_softmax or logits"),
    ({}, None, r"model\.crf \(decoder \"crf\" needs"),
    ({}, {"state_len": 0}, r"model\.crf\.state_len \(0"),
    ({}, {"state_len": "3"}, r"model\.crf\.state_len \('3'"),
    ({}, {"state_len": True}, r"model\.crf\.state_len"),
    ({}, {"state_len": 3, "qscore_scale": "x"}, r"model\.crf\.qscore_scale \('x'"),
    ({}, {"state_len": 3, "qscore_bias": math.inf}, r"model\.crf\.qscore_bias"),
    ({"alphabet": "NACGTM"}, {"state_len": 3}, r"model\.alphabet"),
])
def test_card_rejects_bad_crf_values(tmp_path: Path, model_extra: dict, crf: dict | None,
                                     match: str) -> None:
    from edgecall.models import load_card, write_card_toml

    write_card_toml(tmp_path, _card(model_extra, crf))
    with pytest.raises(ModelError, match=r"card\.toml: bad model card: .*" + match):
        load_card(tmp_path)


# ---- engines -------------------------------------------------------------------------------

def _lstm_onnx(path: Path, hidden: int = 8, classes: int = 20, stride: int = 6) -> None:
    """Conv (stride) -> LSTM -> MatMul: a CRF-shaped graph the native engine cannot run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"wc": (hidden, 1, stride), "wi": (1, 4 * hidden, hidden),
              "wh": (1, 4 * hidden, hidden), "wo": (hidden, classes)}
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), name)
             for name, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["signal", "wc"], ["c"], kernel_shape=[stride],
                              strides=[stride]),
             helper.make_node("Transpose", ["c"], ["tnc"], perm=[2, 0, 1]),
             helper.make_node("LSTM", ["tnc", "wi", "wh"], ["y"], hidden_size=hidden,
                              name="rnn_0"),
             helper.make_node("Squeeze", ["y", "one"], ["y3"]),
             helper.make_node("Transpose", ["y3"], ["ntc"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["ntc", "wo"], ["scores"])]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    graph = helper.make_graph(
        nodes, "lstm_fixture",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "F", classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_native_refuses_lstm_and_auto_uses_onnxruntime(tmp_path: Path) -> None:
    from edgecall.engines import create
    from edgecall.engines.native import NativeEngine, supports
    from edgecall.errors import UnsupportedGraph
    from edgecall.models import load_card, write_card_toml

    _lstm_onnx(tmp_path / "model.onnx")
    write_card_toml(tmp_path, _card({"chunk_size": 60, "overlap": 12}, {"state_len": 1}))
    card = load_card(tmp_path)
    with pytest.raises(UnsupportedGraph, match=r"model\.onnx.*op LSTM \(node 'rnn_0'\)"):
        NativeEngine(card.onnx_path)
    assert not supports(card)
    eng = create("auto", card, threads=1)
    assert eng.name == "onnx"
    out = eng.run(np.random.default_rng(0).normal(size=(2, 1, 60)).astype(np.float32))
    assert out.shape == (2, 10, 20)


# ---- end to end ----------------------------------------------------------------------------

STRIDE, STATE_LEN = 6, 2


def _crf_fixture_folder(folder: Path) -> Path:
    """A model folder whose ONNX graph is a fixed function of the signal with CRF-shaped
    output: scores[t] = 3 * tanh(W x[6t:6t+6] + b), W and b from a seeded generator
    (a test fixture for the pipeline's plumbing, not a model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecall.models import sha256_file, write_card_toml

    folder.mkdir(parents=True, exist_ok=True)
    classes = 4 ** STATE_LEN * 5
    rng = np.random.default_rng(42)
    w = rng.normal(0, 0.1, (classes, 1, STRIDE)).astype(np.float32)
    b = rng.normal(0, 1.0, classes).astype(np.float32)
    nodes = [helper.make_node("Conv", ["signal", "w", "b"], ["c"], kernel_shape=[STRIDE],
                              strides=[STRIDE]),
             helper.make_node("Tanh", ["c"], ["th"]),
             helper.make_node("Mul", ["th", "three"], ["sc"]),
             helper.make_node("Transpose", ["sc"], ["scores"], perm=[0, 2, 1])]
    graph = helper.make_graph(
        nodes, "crf_fixture",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "F", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    card = _card({"stride": STRIDE, "chunk_size": 600, "overlap": 120},
                 {"state_len": STATE_LEN, "qscore_scale": 0.9, "qscore_bias": -0.5})
    card["normalisation"] = {"method": "fixed", "shift": 80.0, "scale": 15.0}
    card["files"] = {"model.onnx": sha256_file(folder / "model.onnx")}
    write_card_toml(folder, card)
    return folder


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_pipeline_decodes_crf_model(tmp_path: Path, decoder: str) -> None:
    import modelkit
    import onnxruntime as ort
    import pysam

    from edgecall.io.reader import iter_reads
    from edgecall.models import load_card
    from edgecall.pipeline import basecall
    from edgecall.signal import prepare
    from edgecall.types import Read

    folder = _crf_fixture_folder(tmp_path / "crf_fixture")
    rng = np.random.default_rng(5)
    sigs = {str(uuid.UUID(int=i + 1)): (80 + 15 * rng.standard_normal(n)).astype(np.float32)
            for i, n in enumerate((6 * 200, 6 * 333, 6 * 777))}  # 2, 4 and 9 chunks
    modelkit.write_pod5(tmp_path / "reads.pod5", sigs)
    out = tmp_path / "calls.fastq"
    summary = basecall([tmp_path / "reads.pod5"], out, model=str(folder), decoder=decoder,
                       engine="auto")
    assert summary.reads == 3 and not summary.failed
    recs = {r.name: r for r in pysam.FastxFile(str(out))}
    card = load_card(folder)
    sess = ort.InferenceSession(str(card.onnx_path), providers=["CPUExecutionProvider"])
    method = "viterbi" if decoder == "greedy" else "beam"
    for read in iter_reads([tmp_path / "reads.pod5"]):
        assert isinstance(read, Read)
        x = prepare(read, card.norm, card.sample_rate).astype(np.float32)
        scores = sess.run(None, {"signal": x[None, None, :]})[0][0]
        want = decode_crf(scores, STATE_LEN, method=method, qscore_scale=0.9, qscore_bias=-0.5)
        rec = recs[read.read_id]
        assert len(want.sequence) > 20
        assert rec.sequence == want.sequence and rec.quality == want.quality
        if method == "viterbi":
            labels, _ = crf_ref.crf_viterbi(scores, STATE_LEN)
            assert rec.sequence == "".join("NACGT"[i] for i in labels)


# ---- real data: dorado's fast R9.4.1 model -------------------------------------------------

def _load_tensor(path: Path) -> np.ndarray:
    """A dorado ``.tensor`` file (TorchScript zip) -> numpy, following its pickle (FORMAT.md)."""
    import collections
    import io
    import pickle
    import zipfile

    z = zipfile.ZipFile(path)
    pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
    prefix = pkl[:-len("data.pkl")]
    dtypes = {"FloatStorage": "<f4", "HalfStorage": "<f2", "LongStorage": "<i8"}

    def rebuild(storage, offset, size, stride, *_):  # noqa: ANN001, ANN202
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride]).copy()

    class Holder:
        pass

    class Unpickler(pickle.Unpickler):
        def find_class(self, mod: str, name: str):  # noqa: ANN201
            if name == "_rebuild_tensor_v2":
                return rebuild
            if mod == "torch" and name in dtypes:
                return np.dtype(dtypes[name])
            if name == "OrderedDict":
                return collections.OrderedDict
            if mod.startswith("__torch__"):
                return Holder
            raise pickle.UnpicklingError(f"{mod}.{name}")

        def persistent_load(self, pid):  # noqa: ANN001, ANN201
            return np.frombuffer(z.read(f"{prefix}data/{pid[2]}"), dtype=pid[1])

    return Unpickler(io.BytesIO(z.read(pkl))).load().__dict__["0"]


def _conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """x [C, T], w [O, C, k] -> [O, T']."""
    v = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (pad, pad))), w.shape[2],
                                                 axis=1)[:, ::stride]
    return np.einsum("ctk,ock->ot", v, w) + b[:, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _lstm(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray,
          b_hh: np.ndarray, reverse: bool) -> np.ndarray:
    """One PyTorch LSTM layer (gates i, f, g, o), zero initial state."""
    x = x[::-1] if reverse else x
    gx = x @ w_ih.T + b_ih + b_hh
    hid = w_hh.shape[1]
    h, c = np.zeros(hid, np.float32), np.zeros(hid, np.float32)
    out = np.empty((len(x), hid), np.float32)
    for t in range(len(x)):
        g = gx[t] + w_hh @ h
        i, f = _sigmoid(g[:hid]), _sigmoid(g[hid:2 * hid])
        gg, o = np.tanh(g[2 * hid:3 * hid]), _sigmoid(g[3 * hid:])
        c = f * c + i * gg
        h = o * np.tanh(c)
        out[t] = h
    return out[::-1] if reverse else out


def _dorado_scores(wts: dict[str, np.ndarray], raw: np.ndarray) -> np.ndarray:
    """int16 signal -> [frames, 320] CRF scores of dna_r9.4.1_e8.1_fast@v3.4."""
    x = raw.astype(np.float32)
    med = np.median(x)
    x = (x - med) / max(1.0, 1.4826 * float(np.median(np.abs(x - med))))
    swish = lambda v: v * _sigmoid(v)  # noqa: E731
    x = swish(_conv1d(x[None], wts["0.conv.weight"], wts["0.conv.bias"], 1, 2))
    x = swish(_conv1d(x, wts["1.conv.weight"], wts["1.conv.bias"], 1, 2))
    x = swish(_conv1d(x, wts["2.conv.weight"], wts["2.conv.bias"], 6, 9)).T
    for i, rev in zip(range(4, 9), (True, False, True, False, True), strict=True):
        x = _lstm(x, wts[f"{i}.rnn.weight_ih_l0"], wts[f"{i}.rnn.weight_hh_l0"],
                  wts[f"{i}.rnn.bias_ih_l0"], wts[f"{i}.rnn.bias_hh_l0"], rev)
    s = np.tanh(x @ wts["9.linear.weight"].T + wts["9.linear.bias"]) * 5.0
    full = np.concatenate([np.full((len(s), 64, 1), 2.0, np.float32), s.reshape(-1, 64, 4)],
                          axis=2)
    return np.ascontiguousarray(full.reshape(len(s), 320), dtype=np.float32)


def _format_viterbi(scores: np.ndarray) -> str:
    """The NumPy Viterbi of FORMAT.md (64 states), for comparison."""
    s = scores.reshape(-1, 64, 5)
    pred = np.array([[k * 16 + st // 4 for k in range(4)] for st in range(64)])
    a, back = np.zeros(64, np.float32), np.empty(s.shape[:2], np.int8)
    for t in range(len(s)):
        cand = np.concatenate([(a + s[t, :, 0])[:, None], a[pred] + s[t, :, 1:]], axis=1)
        back[t] = cand.argmax(1)
        a = cand[np.arange(64), back[t]]
    st, seq = int(a.argmax()), []
    for t in range(len(s) - 1, -1, -1):
        k = back[t, st]
        if k:
            seq.append("ACGT"[st % 4])
            st = pred[st, k - 1]
    return "".join(seq[::-1])


@pytest.mark.realdata
@pytest.mark.slow
def test_dorado_fast_r941_scores_decode_and_map(shared_data: Path) -> None:
    mappy = pytest.importorskip("mappy")
    pod5 = pytest.importorskip("pod5")
    teacher = shared_data / "r9.4.1" / "teacher" / "dorado_fast_v3.4"
    corona = shared_data / "r9.4.1" / "corona"
    if not (teacher / "9.linear.weight.tensor").is_file() or not (corona / "reads.pod5").is_file():
        pytest.skip(f"dorado_fast_v3.4 tensors or corona reads not found under {shared_data}")
    wts = {p.name[:-len(".tensor")]: _load_tensor(p).astype(np.float32)
           for p in teacher.glob("*.tensor")}
    aligner = mappy.Aligner(str(corona / "Corona_NC_045512.2.fasta"), preset="map-ont")
    with pod5.Reader(corona / "reads.pod5") as reader:
        raws = [rec.signal.copy() for _, rec in zip(range(3), reader.reads(), strict=False)]
    k = kb.kernels(False)
    assert k.name == "compiled"
    for raw in raws:
        scores = _dorado_scores(wts, raw)
        labels, moves = k.crf_viterbi(scores, 3)
        seq = "".join("NACGT"[i] for i in labels)
        assert seq == _format_viterbi(scores)
        assert moves.shape == (len(scores),) and int(moves.sum()) == len(seq)
        hits = list(aligner.map(seq))
        assert hits, "the call does not map to SARS-CoV-2"
        best = max(hits, key=lambda h: h.blen)
        identity = 1 - best.NM / best.blen
        assert identity >= 0.85
        d = decode_crf(scores, 3, qscore_scale=0.8555, qscore_bias=-0.7554)
        assert d.sequence == seq and len(d.quality) == len(seq)
        # the mean qscore tells the read's error rate to within a few Phred points
        assert abs(d.mean_qscore + 10 * math.log10(1 - identity)) < 3.5
        beam = decode_crf(scores, 3, method="beam", beam_width=5, qscore_scale=0.8555,
                          qscore_bias=-0.7554)
        hits = list(aligner.map(beam.sequence))
        assert hits, "the beam call does not map to SARS-CoV-2"
        best = max(hits, key=lambda h: h.blen)
        identity = 1 - best.NM / best.blen
        assert identity >= 0.85
        assert abs(beam.mean_qscore + 10 * math.log10(1 - identity)) < 3.5
