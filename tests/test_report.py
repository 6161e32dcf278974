"""tools.report: table round trip, Pareto front, default choice, and a real measuring run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
mappy = pytest.importorskip("mappy")

import modelkit  # noqa: E402

from tools import report as R  # noqa: E402


def _row(name: str, precision: str, ident: float, onnx_sps: float, fmt: str = "onnx",
         size: float = 100.0) -> R.Row:
    return R.Row(name, "t", precision, fmt, f"/x/{name}.{fmt}", size, size / 2, 1000, 900, 5000.0,
                 identity={"ecoli": ident}, agreement=0.99, speed={"onnx": onnx_sps})


def test_markdown_table_parses_back() -> None:
    rows = [_row("fp32", "fp32", 0.9012, 1e5), _row("ptq_minmax", "int8", 0.8951, 2e5)]
    rows[1].notes.append("native: refuses QLinearConv")
    text = R.markdown(rows, title="T", meta={"parent": "p.pt"})
    table = R.parse_markdown(text)
    assert [r["variant"] for r in table] == ["fp32", "ptq_minmax"]
    assert table[0]["identity ecoli"] == "0.9012"
    assert table[1]["onnx samples/s"] == "200,000"
    assert table[1]["tflite samples/s"] == "-"
    assert "native: refuses QLinearConv" in text
    with pytest.raises(ValueError):
        R.parse_markdown("no table here")


def test_pareto_front() -> None:
    pts = [(1.0, 0.90), (2.0, 0.89), (1.5, 0.85), (3.0, 0.80), (0.5, 0.95)]
    assert R.pareto_front(pts) == [0, 1, 3, 4]


def test_choose_default_fastest_int8_within_one_point() -> None:
    rows = [_row("fp32", "fp32", 0.900, 1e5), _row("a", "int8", 0.895, 2e5),
            _row("b", "int8", 0.880, 5e5), _row("c", "mixed", 0.899, 3e5),
            _row("d", "int8", 0.899, 9e5, fmt="tflite")]
    assert R.choose_default(rows, "ecoli").variant == "c"
    # speeds within 3 % are a tie (measurement noise): the more accurate one wins
    rows += [_row("e", "int8", 0.897, 2.95e5), _row("f", "int8", 0.8995, 2.5e5)]
    assert R.choose_default(rows, "ecoli").variant == "c"
    rows[3] = _row("c", "mixed", 0.896, 3e5)
    assert R.choose_default(rows, "ecoli").variant == "e"
    assert R.choose_default(rows, "ecoli", speed_tie=0.0).variant == "c"
    rows = [_row("fp32", "fp32", 0.900, 1e5), _row("b", "int8", 0.85, 5e5)]
    assert R.choose_default(rows, "ecoli") is None
    assert R.choose_default(rows[1:], "ecoli") is None  # no parent row


def test_bench_counts_samples() -> None:
    class Sleepy:
        def run(self, batch: np.ndarray) -> np.ndarray:
            import time
            time.sleep(0.01)
            return batch

    sps = R.bench(Sleepy(), np.zeros((4, 1, 1000), np.float32), 0.1)
    assert 50_000 < sps < 400_000  # 4000 samples per ~10 ms call


@pytest.mark.slow
def test_measure_writes_report(tmp_path: Path, tiny_model: Path) -> None:
    from edgecall.models import load_card
    from tools.quantize import conv_nodes, ptq
    from tools.report import EvalSet, ModelFile

    pod5 = tmp_path / "coded.pod5"
    seqs = modelkit.make_coded_pod5(pod5, 4, seed=3, min_len=400, max_len=600)
    ref = tmp_path / "ref.fa"
    ref.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    from edgecall.io.reader import iter_reads
    from edgecall.types import Read

    reads = [r for r in iter_reads([pod5]) if isinstance(r, Read)]
    card = load_card(tiny_model)
    chunks = np.stack([np.asarray(r.signal_pa(), np.float32)[:400] for r in reads])
    # the level model's Concat(mean, mean^2) cannot share one int8 scale: quantise the
    # averaging conv only (its nodes are unnamed: name them first)
    import onnx

    graph = onnx.load(str(card.onnx_path))
    for i, node in enumerate(graph.graph.node):
        node.name = f"{node.op_type}_{i}"
    named = tmp_path / "named.onnx"
    onnx.save(graph, str(named))
    q = ptq(named, tmp_path / "level.int8.onnx", chunks, only=conv_nodes(named)[:1])
    files = [ModelFile("fp32", "parent", "fp32", card.onnx_path, 16, 16, 4.0),
             ModelFile("ptq", "PTQ", "int8", q, 16, 16, 4.0)]
    ev = EvalSet("coded", reads, mappy.Aligner(str(ref), preset="map-ont"))
    rows = R.measure(files, card, [ev], chunks[:, :400], threads=1, seconds=0.05, rounds=1,
                     batch_size=4)
    assert rows[0].identity["coded"] > 0.95
    assert rows[0].agreement == 1.0 and rows[1].agreement > 0.9
    assert rows[0].speed["onnx"] > 0 and rows[1].speed["onnx"] > 0
    assert rows[1].size_kb > 0 and not math.isnan(rows[1].gzip_kb)
    sens = [{"node": "Conv_0", "kl": 0.01, "label_agreement": 0.99}]
    paths = R.write_outputs(rows, tmp_path / "out", title="t", meta={}, eval_set="coded",
                            sensitivity=sens)
    assert "| Conv_0 | 0.01 | 0.9900 |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    table = R.parse_markdown(paths["markdown"].read_text())
    assert [r["variant"] for r in table] == ["fp32", "ptq"]


def test_eval_spec_errors(tmp_path: Path) -> None:
    from edgecall.errors import InputError

    with pytest.raises(InputError, match="NAME=POD5"):
        R.load_eval("nonsense", ids=None, max_reads=1)
    with pytest.raises(InputError, match="reference FASTA is needed"):
        R.load_eval("x=a.pod5", ids=None, max_reads=1)
    with pytest.raises(InputError, match="no such reference"):
        R.load_eval(f"x=a.pod5:{tmp_path / 'none.fa'}", ids=None, max_reads=1)


def test_apply_updates_cards_and_default(tmp_path: Path) -> None:
    from edgecall.models import load_card, verify
    from tools import cards

    parent = modelkit.make_test_model(tmp_path / "models" / "parent", name="parent")
    int8 = tmp_path / "q.onnx"
    int8.write_bytes((parent / "model.onnx").read_bytes())
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"tflite bytes")
    cards.add_variants(parent, {"int8": int8, "tflite": tfl}, report="r.md",
                       summary={"default_candidate": "ptq"})
    card = load_card(parent)
    assert card.variants == {"int8": "model.int8.onnx", "tflite": "model.tflite"}
    verify(card)  # sha256 of every listed file
    cards.make_default(parent, int8, name="parent_int8", rows={
        "technique": "PTQ minmax", "params": 16, "macs_per_sample": 4.0,
        "identity": {"coded": 0.99}, "parent_identity": 0.995, "onnx_sps": 2e6,
        "parent_onnx_sps": 1e6, "report": "r.md", "rule": R.DEFAULT_RULE})
    new, old = load_card(tmp_path / "models" / "parent_int8"), load_card(parent)
    assert new.default and not old.default
    assert new.file == "model.int8.onnx" and new.raw["compression"]["parent_model"] == "parent"
    assert new.accuracy["coded"]["median_identity"] == 0.99
    assert R.DEFAULT_RULE in new.raw["description"]
    verify(new)
    with pytest.raises(Exception, match="no card.toml"):
        cards.add_variants(tmp_path, {}, report="", summary={})


def test_default_must_map_as_many_reads() -> None:
    rows = [_row("fp32", "fp32", 0.90, 1e5), _row("a", "int8", 0.95, 2e5)]
    rows[0].mapped["ecoli"], rows[1].mapped["ecoli"] = "10/10", "2/10"
    assert R.choose_default(rows, "ecoli") is None
    rows[1].mapped["ecoli"] = "9/10"
    assert R.choose_default(rows, "ecoli").variant == "a"


def test_no_default_from_an_untrained_parent() -> None:
    rows = [_row("fp32", "fp32", 0.0, 1e5), _row("a", "int8", 0.0, 2e5)]
    assert R.choose_default(rows, "ecoli") is None


def test_trained_student_variants(tmp_path: Path) -> None:
    """``--trained``: a pruned student trained elsewhere gets FP32, PTQ and QAT variants."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from edgecall.errors import InputError
    from tools.arch import ArchConfig, Student
    from tools.compress import count_params, fold, save_student, set_skip_scale
    from tools.prune import structured
    from tools.variants import Builder, parent_card

    torch.manual_seed(0)
    parent = Student(ArchConfig(channels=16, depth=2, kernel=5, stem_kernel=5, stride=4))
    set_skip_scale(parent, 0.0)
    parent.eval()
    ppath = save_student(parent, tmp_path / "parent.pt")
    small = structured(parent, 0.5)
    spath = save_student(small, tmp_path / "small.pt")
    card = parent_card(ppath, None)
    chunks = np.random.default_rng(0).standard_normal((24, card.chunk_size)).astype(np.float32)
    b = Builder(parent, card, chunks, tmp_path / "w", steps=2, batch=4, qat_steps=2)
    b.add_trained("small", spath)
    files = b.build("small") + b.build("small>PTQ") + b.build("small>QAT")
    assert [f.precision for f in files] == ["fp32", "int8", "int8"]
    assert files[0].technique.startswith("struct 50% > ")
    assert files[0].params == count_params(fold(small)) < count_params(fold(parent))
    x = chunks[:2, None, :1200]
    want = fold(small)(torch.from_numpy(x)).detach().numpy()
    outs = [ort.InferenceSession(str(f.path), providers=["CPUExecutionProvider"])
            .run(None, {"signal": x})[0] for f in files]
    np.testing.assert_allclose(outs[0], want, atol=1e-4)
    for got in outs[1:]:  # INT8 of the same network: same frame labels almost everywhere
        assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.8
    with pytest.raises(ValueError, match="plain name"):
        b.add_trained("fp32", spath)
    with pytest.raises(InputError, match="needs a tools train checkpoint"):
        b.build("small>QATr")  # a pruned file without a training config: one clear error
    # --apply: the default made from the trained student carries its own provenance
    import json

    side = json.loads((tmp_path / "w" / "small.train.json").read_text())
    assert side["block_channels"] == [8, 8] and "tools.train" in side["training"]["command"]
    models = tmp_path / "models"
    parent_dir = modelkit.make_test_model(models / "parent", name="parent")
    # the QAT file stands in for a QATr one: either kind of default brings its FP32 student
    by = dict(zip(["small", "small>PTQ", "small>QATr"], files, strict=True))
    rows = [R.Row(n, f.technique, f.precision, "onnx", str(f.path), 1.0, 1.0, f.params,
                  f.nonzero, f.macs_per_sample, identity={"e": 0.9}, agreement=1.0,
                  speed={"onnx": 1e6 * (i + 1)}) for i, (n, f) in enumerate(by.items())]
    rows.append(R.Row("fp32", "parent", "fp32", "onnx", str(parent_dir / "model.onnx"), 2.0,
                      1.0, 9, 9, 9.0, identity={"e": 0.905}, agreement=1.0,
                      speed={"onnx": 5e5}))
    best = R.choose_default(rows, "e")
    assert best is not None and best.variant == "small>QATr"
    R.apply(rows, best, parent_dir, report="r.md", eval_set="e")
    from edgecall.models import load_card, verify

    card = load_card(models / "parent_int8")
    verify(card)
    assert card.raw["architecture"]["block_channels"] == [8, 8]
    assert card.raw["training"]["command"] == side["training"]["command"]
    assert card.variants["fp32"] == "model.onnx"
    with pytest.raises(Exception, match="LABEL=CHECKPOINT"):
        R.parse_trained(["nolabel"])
    with pytest.raises(Exception, match="no such checkpoint"):
        R.parse_trained([f"x={tmp_path / 'none.pt'}"])
