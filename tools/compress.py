"""Shared pieces of the compression tools (prune, quantize, tflite-export, report).

* student files: :func:`load_student` reads a training checkpoint (``tools train``)
  or a compressed student written by :func:`save_student`; pruned students
  have per-layer widths, rebuilt from the state dict's shapes;
* :class:`FoldedNet`: a student with every BatchNorm folded into the preceding
  convolution (what is exported and quantised);
* :func:`export_onnx`: the model contract of ``edgecall`` (opset 17, input
  ``signal`` ``[N,1,T]``, output ``logprobs`` ``[N,T/stride,5]``);
* :func:`load_chunks`: normalised real-signal chunks from pod5 files or a
  ``tools data`` ``.npz`` (calibration and distillation data);
* :func:`distill`: fine-tune a student against its FP32 parent (KL on the
  per-frame posteriors, plus CTC when labels exist), with hooks for the
  pruning penalties and masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from edgecall.errors import ChemistryMismatch, InputError, ModelError
from edgecall.signal import Normalisation, chunk_read, normalise, resample
from tools.arch import ArchConfig, Block, Student

log = logging.getLogger(__name__)

STATE_KEYS = ("model", "state_dict", "model_state", "student", "ema")
ARCH_KEYS = ("arch", "cfg", "config", "arch_config")


# --------------------------------------------------------------------------- students

def _find(ckpt: dict[str, Any], keys: Sequence[str]) -> Any:
    """First present key of ``keys`` in ``ckpt`` (None if none)."""
    for key in keys:
        if key in ckpt and ckpt[key] is not None:
            return ckpt[key]
    return None


def load_student(path: str | Path) -> tuple[Student, dict[str, Any]]:
    """Load a student (training checkpoint or compressed student file).

    Returns the model in eval mode and the checkpoint's metadata (everything
    but the weights and optimiser state).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such student checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises pickle, zip and runtime errors
        raise ModelError(f"{p}: not a torch checkpoint ({type(exc).__name__})") from None
    model = student_from_checkpoint(ckpt, p)
    meta = {k: v for k, v in ckpt.items()
            if k not in STATE_KEYS and k not in ("optimizer", "optim", "scheduler", "rng")}
    meta["arch"] = model.cfg.to_dict()
    return model.eval(), meta


def student_from_checkpoint(ckpt: Any, where: str | Path = "checkpoint") -> Student:
    """The student in a loaded checkpoint dict (any per-layer widths), skip scale restored.

    Reads ``tools train`` checkpoints (``config.arch``) and :func:`save_student`
    files (``arch``); pruned layers are rebuilt from the state dict's shapes.
    """
    if not isinstance(ckpt, dict):
        raise ModelError(f"{where}: unexpected checkpoint layout ({type(ckpt).__name__})")
    state, arch = _find(ckpt, STATE_KEYS), _find(ckpt, ARCH_KEYS)
    if state is None or arch is None:
        raise ModelError(f"{where}: checkpoint has no model weights and architecture "
                         f"(keys: {', '.join(map(str, ckpt))})")
    if isinstance(arch, dict) and isinstance(arch.get("arch"), dict):
        arch = arch["arch"]  # a tools.train TrainConfig
    cfg = arch if isinstance(arch, ArchConfig) else ArchConfig(
        **{k: v for k, v in dict(arch).items() if k in ArchConfig.__dataclass_fields__})
    model = Student(cfg)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    resize_like(model, state)
    model.load_state_dict(state)
    set_skip_scale(model, float(ckpt.get("skip_scale", 1.0)))
    return model


def set_skip_scale(model: Student, scale: float) -> None:
    """Scale the residuals (SkipClip); at 0 the blocks become skip-free (untied)."""
    for block in model.blocks:
        block.skip_scale = scale
        if scale == 0.0:
            block.skip = False


def skip_scale_of(model: Student) -> float:
    """The residual scale of a student (0 when skip-free)."""
    blocks = list(model.blocks)
    if not any(b.skip for b in blocks):
        return 0.0
    return float(getattr(blocks[0], "skip_scale", 1.0))


def save_student(model: Student, path: str | Path, **meta: Any) -> Path:
    """Write a (possibly pruned) student: arch, weights, residual scale and ``meta``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": model.cfg.to_dict(), "model": model.state_dict(),
                "skip_scale": skip_scale_of(model), **meta}, p)
    return p


def resize_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Shrink ``model``'s conv/BN layers in place to the shapes in ``state`` (pruned)."""
    for name, mod in list(model.named_modules()):
        w = state.get(f"{name}.weight")
        if w is None:
            continue
        if isinstance(mod, nn.Conv1d) and tuple(w.shape) != tuple(mod.weight.shape):
            groups = w.shape[0] if mod.groups > 1 else 1
            new = nn.Conv1d(w.shape[1] * groups, w.shape[0], mod.kernel_size[0],
                            stride=mod.stride[0], padding=mod.padding[0], groups=groups,
                            bias=mod.bias is not None)
            _set_module(model, name, new)
        elif isinstance(mod, nn.BatchNorm1d) and w.shape[0] != mod.num_features:
            _set_module(model, name, nn.BatchNorm1d(w.shape[0]))


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def count_params(model: nn.Module) -> int:
    """All parameters (dense count)."""
    return sum(int(p.numel()) for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters (what unstructured sparsity removes)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def macs_per_sample(model: nn.Module, stride: int) -> float:
    """Conv multiply-accumulates per input sample (every conv output is at frame rate)."""
    total = 0.0
    for mod in model.modules():
        if isinstance(mod, nn.Conv1d):
            total += mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0]
    return total / stride


# --------------------------------------------------------------------------- export checks

#: an FP32 export (ONNX, TFLite) must match the PyTorch model this closely on real chunks
EXPORT_MAX_ABS = 1e-3  # log-probability units
EXPORT_MIN_SEQUENCE_IDENTITY = 0.995  # greedy-decoded sequences, 1 - edits / length


def _edits(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance of two label sequences (one numpy row per label of ``a``)."""
    row = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        sub = row[:-1] + (b != x)
        new = np.empty_like(row)
        new[0] = i
        new[1:] = np.minimum(row[1:] + 1, sub)
        new = np.minimum.accumulate(new - np.arange(len(b) + 1)) + np.arange(len(b) + 1)
        row = new
    return int(row[-1])


def sequence_identity(ref: np.ndarray, out: np.ndarray) -> float:
    """1 - total edit distance / total length of the greedy basecalls of ``ref``.

    ``ref`` and ``out`` are ``[N, frames, classes]`` log-probabilities of the same chunks,
    decoded by the device's greedy decoder (:func:`edgecall.decode.greedy_ref`).
    """
    from edgecall.decode import greedy_ref

    edits = total = 0
    for r, o in zip(ref, out, strict=True):
        a, b = greedy_ref(r)[0], greedy_ref(o)[0]
        edits += _edits(a, b)
        total += max(len(a), 1)
    return 1.0 - edits / max(total, 1)


def check_fp32_export(stats: dict[str, float], what: str) -> None:
    """Raise unless an FP32 export matched PyTorch (see :data:`EXPORT_MAX_ABS`)."""
    if stats["max_abs"] > EXPORT_MAX_ABS or \
            stats["sequence_identity"] < EXPORT_MIN_SEQUENCE_IDENTITY:
        raise ModelError(
            f"{what}: export differs from the PyTorch model (max |d logp| "
            f"{stats['max_abs']:.3g} > {EXPORT_MAX_ABS:g} or decoded-sequence identity "
            f"{stats['sequence_identity']:.4f} < {EXPORT_MIN_SEQUENCE_IDENTITY})")


# --------------------------------------------------------------------------- folding

def fold_conv_bn(conv: nn.Conv1d, bn: nn.Module) -> nn.Conv1d:
    """A copy of ``conv`` with the (eval-mode) BatchNorm ``bn`` folded into it."""
    new = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                    stride=conv.stride[0], padding=conv.padding[0], groups=conv.groups,
                    bias=True)
    w = conv.weight.detach().clone()
    b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
    if isinstance(bn, nn.BatchNorm1d):
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight.detach() if bn.affine else torch.ones_like(std)
        beta = bn.bias.detach() if bn.affine else torch.zeros_like(std)
        scale = gamma / std
        w = w * scale[:, None, None]
        b = (b - bn.running_mean) * scale + beta
    new.weight.data.copy_(w)
    new.bias.data.copy_(b)
    return new


class FoldedNet(nn.Module):
    """A student with BatchNorm folded away: convs, activations, optional residuals.

    ``forward`` matches :class:`tools.arch.Student` in eval mode.
    """

    def __init__(self, stem: nn.Conv1d, dws: Sequence[nn.Conv1d], pws: Sequence[nn.Conv1d],
                 skips: Sequence[float], head: nn.Conv1d, activation: str, stride: int) -> None:
        super().__init__()
        self.stem = stem
        self.dws = nn.ModuleList(dws)
        self.pws = nn.ModuleList(pws)
        self.skips = tuple(float(s) for s in skips)  # residual scale per block, 0 = none
        self.head = head
        self.activation = activation
        self.stride = stride

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The student's activation."""
        if self.activation == "silu":
            return F.silu(x)
        if self.activation == "relu6":
            return F.relu6(x)
        return F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, T] -> log-probs [N, T/stride, C]."""
        h = self.act(self.stem(x))
        for dw, pw, skip in zip(self.dws, self.pws, self.skips, strict=True):
            y = pw(dw(h))
            if skip:
                y = y + h if skip == 1.0 else y + skip * h
            h = self.act(y)
        return torch.log_softmax(self.head(h).transpose(1, 2), dim=-1)

    def convs(self) -> list[tuple[str, nn.Conv1d]]:
        """Every conv in data-path order with its module name."""
        out: list[tuple[str, nn.Conv1d]] = [("stem", self.stem)]
        for i, (dw, pw) in enumerate(zip(self.dws, self.pws, strict=True)):
            out += [(f"dws.{i}", dw), (f"pws.{i}", pw)]
        return out + [("head", self.head)]


def fold(student: Student) -> FoldedNet:
    """Fold every BatchNorm of an eval-mode student into its convolution."""
    student = student.eval()
    blocks: list[Block] = list(student.blocks)
    return FoldedNet(
        fold_conv_bn(student.stem, student.stem_bn),
        [fold_conv_bn(b.dw, b.dw_bn) for b in blocks],
        [fold_conv_bn(b.pw, b.bn) for b in blocks],
        [float(getattr(b, "skip_scale", 1.0)) if b.skip else 0.0 for b in blocks],
        fold_conv_bn(student.head, nn.Identity()),
        student.cfg.activation, student.cfg.stride).eval()


def export_onnx(model: nn.Module, path: str | Path, *, length: int = 1200,
                check: np.ndarray | None = None) -> Path:
    """Export the edgecall model contract (opset 17, dynamic N and T) to ``path``.

    With ``check`` (``[M, T]`` real chunks) the file is run in onnxruntime and held to
    :func:`check_fp32_export` against ``model``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    stride = int(getattr(model, "stride", None) or model.cfg.stride)  # type: ignore[union-attr]
    x = torch.zeros(2, 1, (length // stride) * stride)
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(p), input_names=["signal"],
                          output_names=["logprobs"], opset_version=17, dynamo=False,
                          dynamic_axes={"signal": {0: "batch", 2: "samples"},
                                        "logprobs": {0: "batch", 1: "frames"}})
    graph = onnx.load(str(p))
    if _inline_identities(graph):
        onnx.save(graph, str(p))
    if check is not None:
        check_fp32_export(onnx_vs_torch(p, model, check), str(p))
    return p


def onnx_vs_torch(path: str | Path, model: nn.Module, chunks: np.ndarray) -> dict[str, float]:
    """:func:`tools.quantize.compare` of an ONNX file against ``model`` on ``chunks``."""
    from tools.quantize import compare, run_onnx

    x = np.ascontiguousarray(chunks, dtype=np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x[:, None, :])).numpy()
    return compare(ref, run_onnx(path, x))


def _inline_identities(model: onnx.ModelProto) -> bool:
    """Replace Identity nodes over initializers (deduplicated weights) by copies."""
    inits = {i.name: i for i in model.graph.initializer}
    kept, changed = [], False
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            model.graph.initializer.append(copy_)
            changed = True
        else:
            kept.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return changed


# --------------------------------------------------------------------------- data

def _pod5_files(sources: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of pod5 files."""
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            files += sorted(src.rglob("*.pod5"))
        elif src.is_file():
            files.append(src)
        else:
            raise InputError(f"{src}: no such file or folder")
    return files


def load_chunks(sources: Sequence[str | Path], *, chunk_size: int, max_chunks: int = 512,
                sample_rate: int = 4000, norm: Normalisation | None = None,
                exclude_reads: set[str] | None = None, seed: int = 0,
                pore: str = "") -> np.ndarray:
    """Normalised real-signal chunks ``[M, chunk_size]`` float32 for calibration/distillation.

    Parameters
    ----------
    sources : sequence of path
        pod5 files or folders of them, or ``tools data`` ``.npz`` datasets
        (their ``signal`` array, cropped to ``chunk_size``).
    chunk_size : int
        Samples per chunk (non-overlapping, whole chunks only).
    max_chunks : int
        At most this many chunks, drawn evenly (seeded) from all of them.
    sample_rate : int
        The model's rate; reads at other rates are resampled.
    norm : Normalisation, optional
        The model card's normalisation (default median/MAD).
    exclude_reads : set of str, optional
        Read ids never used (evaluation reads).
    pore : str, optional
        The model's pore chemistry; pod5 reads from another chemistry are refused.

    Raises
    ------
    InputError
        If no source yields a single chunk.
    ChemistryMismatch
        If a pod5 file's flow cell belongs to another chemistry than ``pore``.
    """
    norm = norm or Normalisation("median_mad")
    exclude = exclude_reads or set()
    pieces: list[np.ndarray] = []
    npz = [Path(s) for s in sources if str(s).endswith(".npz")]
    for path in npz:
        if not path.is_file():
            raise InputError(f"{path}: no such dataset")
        sig = np.load(path)["signal"].astype(np.float32)
        if sig.shape[1] >= chunk_size:
            pieces.append(sig[:, :chunk_size])
    pod5s = [s for s in sources if not str(s).endswith(".npz")]
    if pod5s:
        pieces += _pod5_chunks(_pod5_files(pod5s), chunk_size, sample_rate, norm, exclude,
                               pore)
    if not pieces:
        raise InputError(f"no calibration chunks of {chunk_size} samples in "
                         f"{', '.join(map(str, sources)) or 'an empty source list'}")
    allc = np.concatenate(pieces, axis=0)
    if allc.shape[0] > max_chunks:
        idx = np.sort(np.random.default_rng(seed).choice(allc.shape[0], max_chunks,
                                                         replace=False))
        allc = allc[idx]
    return np.ascontiguousarray(allc, dtype=np.float32)


def _pod5_chunks(files: list[Path], chunk_size: int, rate: int, norm: Normalisation,
                 exclude: set[str], pore: str = "") -> list[np.ndarray]:
    """Whole non-overlapping chunks of every read in ``files``."""
    import pod5

    from edgecall.models import FLOW_CELLS

    out: list[np.ndarray] = []
    for path in files:
        try:
            with pod5.Reader(path) as reader:
                for rec in reader.reads():
                    rid = str(rec.read_id)
                    fc = rec.run_info.flow_cell_product_code.upper()
                    got = next((k for k, v in FLOW_CELLS.items() if fc in v), "")
                    if pore and got and got != pore.lower():
                        raise ChemistryMismatch(f"{path}: calibration reads are {got} ({fc}) "
                                                f"but the model is for {pore}")
                    if rid in exclude:
                        continue
                    pa = resample(rec.signal_pa.astype(np.float32),
                                  int(rec.run_info.sample_rate), rate)
                    x = normalise(pa, norm)
                    chunks = [c.signal for c in chunk_read(rid, x, chunk_size, 0)
                              if c.length == chunk_size]
                    if chunks:
                        out.append(np.stack(chunks))
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{path}: cannot read pod5 ({exc})") from None
    return out


# --------------------------------------------------------------------------- distillation

def kd_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Mean per-frame KL(teacher || student) of two ``[N, F, C]`` log-posteriors."""
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none").sum(-1)
    return kl.mean()


def distill(student: nn.Module, teacher: nn.Module, chunks: np.ndarray, *, steps: int,
            batch_size: int = 16, lr: float = 5e-4, seed: int = 0,
            penalty: Callable[[int], torch.Tensor] | None = None,
            after_step: Callable[[int], None] | None = None,
            crop: int | None = 1200) -> list[float]:
    """Fine-tune ``student`` to match ``teacher``'s posteriors on ``chunks``.

    Parameters
    ----------
    student, teacher : nn.Module
        Both map ``[N,1,T]`` to log-posteriors ``[N,F,C]``; the teacher is frozen.
    chunks : ndarray
        ``[M, T]`` normalised signal.
    steps : int
        Optimiser steps (AdamW, cosine-decayed learning rate).
    penalty : callable, optional
        ``penalty(step)`` -> a scalar added to the loss (group-sparsity terms).
    after_step : callable, optional
        Called after every optimiser step (re-applies pruning masks).
    crop : int, optional
        Train on random ``crop``-sample windows of longer chunks (one offset per
        batch), so long chunks give many different windows; None = whole chunks.

    Returns
    -------
    list of float
        The loss per step.
    """
    if chunks.ndim != 2 or chunks.shape[0] == 0:
        raise InputError("distillation needs a non-empty [M, T] chunk array")
    rng = np.random.default_rng(seed)
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        idx = rng.integers(0, chunks.shape[0], size=min(batch_size, chunks.shape[0]))
        batch = chunks[idx]
        if crop is not None and chunks.shape[1] > crop:
            off = int(rng.integers(0, chunks.shape[1] - crop + 1))
            batch = batch[:, off:off + crop]
        x = torch.from_numpy(np.ascontiguousarray(batch)[:, None, :])
        with torch.no_grad():
            target = teacher(x)
        loss = kd_loss(student(x), target)
        if penalty is not None:
            loss = loss + penalty(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(step)
        losses.append(float(loss.detach()))
    student.eval()
    return losses
