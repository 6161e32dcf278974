"""``tools quantize``: INT8 post-training quantisation, sensitivity, mixed precision, QAT.

* **PTQ** (:func:`ptq`): onnxruntime static quantisation of a BatchNorm-folded
  FP32 ONNX model to QDQ: int8 activations and weights (S8S8), per-channel
  symmetric weights (so the int8 depthwise/pointwise kernels apply), calibrated
  on real signal chunks with MinMax, Percentile or Entropy ranges.
* **sensitivity** (:func:`sensitivity`): each Conv quantised alone, the KL
  divergence of the output posteriors from FP32 and the per-frame label
  agreement on held chunks; **mixed precision** keeps the most sensitive convs
  (or explicitly the first/last) in FP32 (``--keep-fp32``).
* **QAT** (:func:`qat`): the folded student is fine-tuned by distillation with
  fake quantisation that mirrors the PTQ scheme (per-channel symmetric int8
  weights, per-tensor int8 activations at every conv input with EMA ranges);
  :func:`export_qat` writes it as QDQ ONNX with the learnt activation ranges
  forced on the conv inputs (onnxruntime ``TensorQuantOverrides``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecall.errors import InputError, ModelError

log = logging.getLogger(__name__)

CALIBRATION = ("minmax", "percentile", "entropy")


# --------------------------------------------------------------------------- helpers

def _check_model(path: str | Path) -> Path:
    """An existing ONNX file, or a one-line ModelError."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.onnx"
    if not p.is_file():
        raise ModelError(f"{p}: no such ONNX model")
    return p


def _check_chunks(chunks: np.ndarray) -> np.ndarray:
    """A non-empty float32 ``[M, T]`` array, or a one-line InputError."""
    chunks = np.asarray(chunks, dtype=np.float32)
    if chunks.ndim != 2 or chunks.shape[0] == 0:
        raise InputError(f"calibration set is empty (got chunk array of shape {chunks.shape})")
    return chunks


def _reader(chunks: np.ndarray, batch: int = 16) -> Any:
    """An onnxruntime CalibrationDataReader over ``chunks`` in equal batches.

    The histogram calibrators stack every batch, so a short last batch is dropped.
    """
    from onnxruntime.quantization import CalibrationDataReader

    batch = min(batch, chunks.shape[0])
    usable = (chunks.shape[0] // batch) * batch

    class ChunkReader(CalibrationDataReader):
        """Feeds ``signal`` batches to the calibrator."""

        def __init__(self) -> None:
            self.batches = iter([chunks[i:i + batch, None, :]
                                 for i in range(0, usable, batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"signal": np.ascontiguousarray(x)}

    return ChunkReader()


def conv_nodes(path: str | Path) -> list[str]:
    """Names of the Conv nodes of an ONNX graph in graph order."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def conv_io(path: str | Path) -> list[tuple[str, str]]:
    """(input, output) tensor names of every Conv node in graph order."""
    return [(n.input[0], n.output[0]) for n in onnx.load(str(path)).graph.node
            if n.op_type == "Conv"]


def run_onnx(path: str | Path, chunks: np.ndarray, *, threads: int = 1,
             batch: int = 32) -> np.ndarray:
    """Run an ONNX model on ``[M, T]`` chunks; returns ``[M, F, C]`` outputs."""
    from edgecall.engines.onnx import OnnxEngine

    eng = OnnxEngine(path, threads=threads)
    return np.concatenate([eng.run(chunks[i:i + batch, None, :])
                           for i in range(0, chunks.shape[0], batch)])


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """KL(ref || out) per frame, max |diff|, per-frame argmax agreement, and the identity
    of the greedy-decoded sequences (:func:`tools.compress.sequence_identity`)."""
    from tools.compress import sequence_identity

    p = np.exp(ref)
    kl = float(np.mean(np.sum(p * (ref - out), axis=-1)))
    agree = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
    return {"kl": kl, "max_abs": float(np.max(np.abs(ref - out))), "label_agreement": agree,
            "sequence_identity": sequence_identity(ref, out)}


# --------------------------------------------------------------------------- PTQ

def ptq(model: str | Path, out: str | Path, chunks: np.ndarray, *, method: str = "minmax",
        per_channel: bool = True, activation: str = "int8", exclude: list[str] | None = None,
        only: list[str] | None = None, overrides: dict[str, Any] | None = None,
        percentile: float = 99.999, reduce_range: bool = True, compact: bool = True) -> Path:
    """Static INT8 QDQ quantisation of a folded FP32 ONNX model.

    The output gets short tensor/node names (:func:`compact_names`) unless
    ``compact`` is False.

    Parameters
    ----------
    model : path
        FP32 ONNX (BatchNorm folded, as ``tools export`` writes it) or its folder.
    out : path
        Where to write the QDQ model.
    chunks : ndarray
        ``[M, T]`` normalised real chunks for calibration.
    method : {"minmax", "percentile", "entropy"}
        Activation range calibration.
    per_channel : bool
        Per-output-channel symmetric weight scales.
    activation : {"int8", "uint8"}
        Activation type. S8S8 is the ARM fast path; on x86 onnxruntime's U8S8
        kernels are the fast ones (measured here, AVX2: U8S8 2.9x FP32, S8S8 0.9x).
    exclude, only : list of str, optional
        Conv node names kept in FP32 / the only nodes quantised.
    overrides : dict, optional
        onnxruntime ``TensorQuantOverrides`` (e.g. QAT activation ranges).
    reduce_range : bool
        7-bit weights ([-64, 64]). Default on: onnxruntime's int8 kernels on x86
        CPUs without VNNI (AVX2 ``vpmaddubsw``) saturate int16 pair sums with
        full-range per-channel weights (measured: 0.82 vs 0.99 frame agreement on
        a test model); ARM ``sdot`` does not, so ``False`` is safe on ARM only.

    Returns
    -------
    Path
        The written model.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = _check_model(model)
    chunks = _check_chunks(chunks)
    if method not in CALIBRATION:
        raise ValueError(f"unknown calibration {method!r} (choose from {', '.join(CALIBRATION)})")
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}[method]
    act = QuantType.QInt8 if activation == "int8" else QuantType.QUInt8
    named = {n.name for n in onnx.load(str(src)).graph.node if n.name}
    unknown = sorted((set(exclude or []) | set(only or [])) - named)
    if unknown:
        raise ValueError(f"{src}: no node named {', '.join(map(repr, unknown))}")
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True,
                             "CalibPercentile": percentile}
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    dst = Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_optimization=True,
                          skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), _reader(chunks), quant_format=QuantFormat.QDQ,
                        activation_type=act, weight_type=QuantType.QInt8,
                        per_channel=per_channel, reduce_range=reduce_range,
                        calibrate_method=calib,
                        nodes_to_exclude=exclude or [], nodes_to_quantize=only or [],
                        extra_options=extra)
    return compact_names(dst) if compact else dst


def compact_names(path: str | Path) -> Path:
    """Rewrite an ONNX file with short tensor and node names (``t12``, ``Conv_3``).

    The quantiser names every scale, zero point and QDQ node after its weight
    (``pws.7.weight_quantized_scale``...); in a 100 KB INT8 model those strings
    are ~15 % of the file. Graph input/output names (the model contract) stay.
    """
    p = Path(path)
    model = onnx.load(str(p))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name, init.doc_string = short(init.name), ""
    for i, node in enumerate(graph.node):
        node.name, node.doc_string = f"{node.op_type}_{i}", ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    del graph.value_info[:]
    model.doc_string = ""
    onnx.checker.check_model(model)
    tmp = p.with_name(f".{p.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(p)
    return p


def sensitivity(model: str | Path, chunks: np.ndarray, *, method: str = "minmax",
                eval_chunks: np.ndarray | None = None,
                activation: str = "int8") -> list[dict[str, Any]]:
    """Quantise each Conv alone; how far its output posteriors move from FP32.

    Returns one dict per Conv node (graph order): ``node``, ``kl``, ``max_abs``,
    ``label_agreement``.
    """
    src = _check_model(model)
    chunks = _check_chunks(chunks)
    held = chunks if eval_chunks is None else _check_chunks(eval_chunks)
    ref = run_onnx(src, held)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, node in enumerate(conv_nodes(src)):
            q = ptq(src, Path(tmp) / f"q{i}.onnx", chunks, method=method, only=[node],
                    activation=activation)
            rows.append({"node": node, **compare(ref, run_onnx(q, held))})
            log.info("sensitivity %s: %s", node, rows[-1])
    return rows


def most_sensitive(rows: list[dict[str, Any]], k: int) -> list[str]:
    """The ``k`` Conv nodes with the largest KL (kept FP32 in mixed precision)."""
    return [r["node"] for r in sorted(rows, key=lambda r: -r["kl"])[:k]]


def first_last(model: str | Path) -> list[str]:
    """The first (stem) and last (head) Conv node names."""
    names = conv_nodes(_check_model(model))
    return [names[0], names[-1]] if len(names) > 1 else names


# --------------------------------------------------------------------------- QAT

def qat(folded: Any, teacher: Any, chunks: np.ndarray, *, steps: int, batch_size: int = 16,
        lr: float = 2e-4) -> Any:
    """Quantisation-aware distillation of a :class:`tools.compress.FoldedNet` (in place).

    Returns the model with fake quantisation attached (``model.qat_ranges``
    holds the learnt ``[min, max, seen]`` of every conv input, in conv order).
    """
    from tools.compress import distill

    chunks = _check_chunks(chunks)
    attach_fake_quant(folded)
    distill(folded, teacher, chunks, steps=steps, batch_size=batch_size, lr=lr)
    return folded.eval()


def qat_recipe(folded: Any, config: dict[str, Any], *, steps: int, lr: float,
               seed: int = 0) -> Any:
    """Quantisation-aware training that continues a student's own training recipe.

    ``config`` is the ``tools train`` checkpoint's config: its training set (chunks
    with labels and teacher posteriors), CTC + distillation loss weights and
    augmentation. The folded student gets fake quantisation (as :func:`qat`) and
    ``steps`` AdamW steps at ``lr`` (cosine decay). Returns the model in eval mode.
    """
    import dataclasses
    import math

    import torch

    from tools.train import ChunkData, TrainConfig, teacher_resampler, train_step

    if not config.get("train"):
        raise InputError("QAT with the student's recipe needs a tools train checkpoint "
                         "(its config names the training set); this student has none")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known})
    if not Path(cfg.train).is_file():
        raise InputError(f"{cfg.train}: training set of the student not found (QAT with "
                         "its recipe needs it)")
    data = ChunkData(cfg.train)
    rmat = teacher_resampler(data, int(folded.stride))
    attach_fake_quant(folded)
    folded.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in folded.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        loss, ctc, kd = train_step(folded, opt, data, idx, rmat, cfg)
        if (step + 1) % 100 == 0:
            log.info("QAT (recipe) step %d/%d loss %.4f ctc %.4f kd %.4f", step + 1, steps,
                     loss, ctc, kd)
    return folded.eval()


def fake_quant_act(x: Any, lo: float, hi: float) -> Any:
    """Asymmetric per-tensor int8 fake quantisation with range [lo, hi] (0 included)."""
    import torch

    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero = max(-128, min(127, int(round(-128 - lo / scale))))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)


def fake_quant_weight(w: Any, qmax: int = 64) -> Any:
    """Per-output-channel symmetric fake quantisation to [-qmax, qmax] (64: ``reduce_range``)."""
    import torch

    scale = (w.detach().abs().amax(dim=(1, 2)) / qmax).clamp_min(1e-8)
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def attach_fake_quant(model: Any, momentum: float = 0.05) -> Any:
    """Fake-quantise every conv of a FoldedNet: weights per channel, inputs per tensor.

    Input ranges follow an exponential moving average of the batch min/max
    while training and are frozen in eval mode.
    """
    import torch
    from torch.nn.utils import parametrize

    class WeightFQ(torch.nn.Module):
        """Parametrisation applying :func:`fake_quant_weight`."""

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return fake_quant_weight(w)

    convs = [c for _, c in model.convs()]
    ranges: list[list[Any]] = [[0.0, 0.0, False] for _ in convs]

    def make_hook(r: list[Any]):  # noqa: ANN202 - hook factory
        def hook(mod: torch.nn.Module, inputs: tuple) -> tuple:
            x = inputs[0]
            if mod.training:
                lo, hi = float(x.detach().min()), float(x.detach().max())
                if r[2]:
                    r[0] += momentum * (lo - r[0])
                    r[1] += momentum * (hi - r[1])
                else:
                    r[0], r[1], r[2] = lo, hi, True
            return (fake_quant_act(x, r[0], r[1]),) if r[2] else inputs
        return hook

    for conv, r in zip(convs, ranges, strict=True):
        conv.register_forward_pre_hook(make_hook(r))
        parametrize.register_parametrization(conv, "weight", WeightFQ())
    model.qat_ranges = ranges
    return model


def export_qat(model: Any, out: str | Path, chunks: np.ndarray, *, length: int = 1200,
               activation: str = "int8") -> Path:
    """Write a QAT model as QDQ ONNX with its learnt conv-input ranges forced."""
    from tools.compress import export_onnx

    dst = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "fp32.onnx"
        export_onnx(strip_fake_quant(model), plain, length=length)
        overrides: dict[str, Any] = {}
        for (inp, _), (lo, hi, seen) in zip(conv_io(plain), model.qat_ranges, strict=True):
            if seen:
                overrides[inp] = [{"rmin": np.float32(min(lo, 0.0)),
                                   "rmax": np.float32(max(hi, 0.0))}]
        ptq(plain, dst, chunks, method="minmax", overrides=overrides, activation=activation)
    return dst


def strip_fake_quant(model: Any) -> Any:
    """A plain FP32 FoldedNet with the QAT model's (unquantised) weights."""
    from torch import nn
    from torch.nn.utils import parametrize

    from tools.compress import FoldedNet

    def plain(conv: nn.Conv1d) -> nn.Conv1d:
        w = (conv.parametrizations.weight.original
             if parametrize.is_parametrized(conv, "weight") else conv.weight)
        new = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                        stride=conv.stride[0], padding=conv.padding[0], groups=conv.groups,
                        bias=conv.bias is not None)
        new.weight.data.copy_(w.detach())
        if conv.bias is not None:
            new.bias.data.copy_(conv.bias.detach())
        return new

    return FoldedNet(plain(model.stem), [plain(c) for c in model.dws],
                     [plain(c) for c in model.pws], model.skips, plain(model.head),
                     model.activation, model.stride).eval()


# --------------------------------------------------------------------------- command line

def register(sub: Any) -> None:
    """Add ``tools quantize``."""
    import argparse

    p = sub.add_parser("quantize", help="INT8 PTQ / QAT to QDQ ONNX, sensitivity report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path,
                   help="model folder (card.toml + model.onnx) or .onnx; with --qat a student .pt")
    p.add_argument("--data", nargs="+", required=True,
                   help="calibration pod5 files/folders or .npz chunk sets (real signal)")
    p.add_argument("--out", type=Path, required=True, help="QDQ ONNX to write")
    p.add_argument("--calibration", choices=CALIBRATION, default="minmax")
    p.add_argument("--activation", choices=("int8", "uint8"), default="int8")
    p.add_argument("--keep-fp32", default="none",
                   help="none | first-last | auto:K (K most sensitive convs) | node,node")
    p.add_argument("--sensitivity", type=Path, help="write the per-conv sensitivity JSON here")
    p.add_argument("--qat", action="store_true", help="quantisation-aware distillation")
    p.add_argument("--steps", type=int, default=200, help="QAT steps")
    p.add_argument("--chunk-size", type=int, default=0, help="default: the card's")
    p.add_argument("--max-chunks", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)


def _card_of(path: Path) -> Any:
    """The model card beside ``path`` (folder or file), or None."""
    from edgecall.models import load_card

    folder = path if path.is_dir() else path.parent
    return load_card(folder) if (folder / "card.toml").is_file() else None


def run(args: Any) -> int:
    """Run ``tools quantize``."""
    import json

    if not args.model.exists():
        raise ModelError(f"{args.model}: no such model")
    card = _card_of(args.model)
    chunk = args.chunk_size or (card.chunk_size if card else 1200)
    chunks = _calibration(args, card, chunk)
    if args.qat:
        return _run_qat(args, chunks, chunk)
    src = _check_model(args.model if args.model.suffix == ".onnx" or args.model.is_dir()
                       else args.model)
    rows = None
    keep = args.keep_fp32
    if args.sensitivity or keep.startswith("auto:"):
        rows = sensitivity(src, chunks[: min(64, len(chunks))], method=args.calibration)
        if args.sensitivity:
            args.sensitivity.write_text(json.dumps(rows, indent=1))
    exclude = _exclusions(keep, src, rows)
    ptq(src, args.out, chunks, method=args.calibration, activation=args.activation,
        exclude=exclude)
    stats = compare(run_onnx(src, chunks[:64], threads=args.threads),
                    run_onnx(args.out, chunks[:64], threads=args.threads))
    print(f"{args.out}: {args.calibration} {args.activation}, fp32 kept: "
          f"{', '.join(exclude) or 'none'}; vs fp32 KL {stats['kl']:.4g}, "
          f"frame agreement {stats['label_agreement']:.4f}")
    return 0


def _calibration(args: Any, card: Any, chunk: int) -> np.ndarray:
    """Real calibration chunks for the model (card normalisation and chemistry)."""
    from tools.compress import load_chunks

    return load_chunks(args.data, chunk_size=chunk, max_chunks=args.max_chunks,
                       sample_rate=card.sample_rate if card else 4000,
                       norm=card.norm if card else None, pore=card.pore if card else "")


def _exclusions(keep: str, model: Path, rows: list[dict[str, Any]] | None) -> list[str]:
    """Conv node names to keep FP32 from a ``--keep-fp32`` value."""
    if keep in ("", "none"):
        return []
    if keep == "first-last":
        return first_last(model)
    if keep.startswith("auto:"):
        return most_sensitive(rows or [], int(keep.split(":", 1)[1]))
    names = [k.strip() for k in keep.split(",") if k.strip()]
    unknown = sorted(set(names) - set(conv_nodes(model)))
    if unknown:
        raise ValueError(f"--keep-fp32: {model} has no Conv node {', '.join(unknown)}")
    return names


def _run_qat(args: Any, chunks: np.ndarray, chunk: int) -> int:
    """QAT from a student checkpoint, exported as QDQ ONNX."""
    import copy

    import torch

    from tools.compress import fold, load_student

    torch.set_num_threads(max(1, args.threads))
    student, _ = load_student(args.model)
    folded = fold(student)
    teacher = copy.deepcopy(folded).eval()
    qat(folded, teacher, chunks, steps=args.steps)
    export_qat(folded, args.out, chunks, length=chunk)
    with torch.no_grad():
        ref = folded(torch.from_numpy(chunks[:64, None, :])).numpy()
    stats = compare(ref, run_onnx(args.out, chunks[:64], threads=args.threads))
    print(f"{args.out}: QAT {args.steps} steps; onnxruntime vs fake-quant torch KL "
          f"{stats['kl']:.4g}, frame agreement {stats['label_agreement']:.4f}")
    return 0
