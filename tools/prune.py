"""``tools prune``: unstructured, structured and delayed-masking pruning of students.

Three techniques, each followed by distillation fine-tuning against the FP32
parent (:func:`tools.compress.distill`):

* **unstructured** L1 magnitude pruning of the conv weights, one threshold over
  all layers (``scope="global"``) or the same fraction per layer
  (``scope="layer"``). The zeros stay in dense tensors: the file compresses
  and the parameter count drops, but a dense runtime does the same work.
* **structured** channel pruning by filter L1 norm (of the BatchNorm-folded
  filter). Channels live in *channel spaces*: the stem output and each block's
  output; a residual connection ties a block's output space to its input space
  and tied spaces keep the same channel indices. Removing a channel shrinks the
  producing conv and BatchNorm and the consuming depthwise conv, its
  BatchNorm and the next pointwise conv (or the head) - the exported graph is
  physically smaller.
* **delayed masking** (Frensel, Al-Ars & Hofstee 2024): a group-lasso penalty
  over each channel's parameters is ramped in after a delay so the network
  first learns, then shifts information away from the weakest channels; those
  are masked (outputs forced to zero) for the rest of fine-tuning and finally
  removed as in structured pruning.

``iterative`` chains prune -> distill over a schedule of amounts.
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tools.arch import Student
from tools.compress import (
    count_nonzero,
    count_params,
    distill,
    fold_conv_bn,
    load_chunks,
    load_student,
    save_student,
)

log = logging.getLogger(__name__)

METHODS = ("unstructured", "structured", "delayed")


# --------------------------------------------------------------------------- unstructured

def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv weight tensors by name (BatchNorm and biases are never pruned)."""
    return {f"{n}.weight": m.weight for n, m in model.named_modules()
            if isinstance(m, nn.Conv1d)}


def unstructured_masks(model: nn.Module, amount: float,
                       scope: str = "global") -> dict[str, torch.Tensor]:
    """L1-magnitude masks (1 = keep) removing ``amount`` of the conv weights."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}")
    weights = prunable_weights(model)
    if scope == "global":
        flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        k = int(round(amount * flat.numel()))
        thr = flat.kthvalue(k).values if k > 0 else torch.tensor(-1.0)
        return {n: (w.detach().abs() > thr).float() for n, w in weights.items()}
    if scope == "layer":
        masks = {}
        for n, w in weights.items():
            k = int(round(amount * w.numel()))
            thr = w.detach().abs().flatten().kthvalue(k).values if k > 0 else torch.tensor(-1.0)
            masks[n] = (w.detach().abs() > thr).float()
        return masks
    raise ValueError(f"unknown pruning scope {scope!r} (global or layer)")


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def sparsity(model: nn.Module) -> float:
    """Fraction of conv weights that are exactly zero."""
    ws = prunable_weights(model).values()
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(1, total)


# --------------------------------------------------------------------------- channel spaces

@dataclass(frozen=True, slots=True)
class Space:
    """One channel space: produced by conv ``producer`` (+ ``bn``), consumed by block/head."""

    index: int  # 0 = stem output, i + 1 = block i output
    producer: str
    bn: str


def spaces(model: Student) -> list[Space]:
    """The channel spaces of a student in data-path order."""
    out = [Space(0, "stem", "stem_bn")]
    out += [Space(i + 1, f"blocks.{i}.pw", f"blocks.{i}.bn") for i in range(len(model.blocks))]
    return out


def tied_groups(model: Student) -> list[list[int]]:
    """Lists of space indices that must keep the same channels (residual ties)."""
    groups: list[list[int]] = [[0]]
    for i, block in enumerate(model.blocks):
        if block.skip:
            groups[-1].append(i + 1)
        else:
            groups.append([i + 1])
    return groups


def channel_importance(model: Student) -> dict[int, torch.Tensor]:
    """Per space: L1 norm of each BatchNorm-folded producing filter."""
    out = {}
    for sp in spaces(model):
        conv = model.get_submodule(sp.producer)
        folded = fold_conv_bn(conv, model.get_submodule(sp.bn))
        out[sp.index] = folded.weight.detach().abs().sum(dim=(1, 2))
    return out


def _n_keep(width: int, amount: float, multiple: int) -> int:
    """Channels kept when removing ``amount`` of ``width`` (rounded to ``multiple``)."""
    keep = max(1, int(round(width * (1.0 - amount))))
    if multiple > 1 and keep > multiple:
        keep = max(multiple, int(round(keep / multiple)) * multiple)
    return min(width, keep)


def select_channels(model: Student, amount: float, *, multiple: int = 4,
                    scores: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Kept channel indices per space: the highest-scoring (default filter L1) ones."""
    scores = scores or channel_importance(model)
    keep: dict[int, torch.Tensor] = {}
    for group in tied_groups(model):
        total = sum(scores[i] / (scores[i].sum() + 1e-12) for i in group)
        n = _n_keep(total.numel(), amount, multiple)
        idx = torch.sort(torch.topk(total, n).indices).values
        for i in group:
            keep[i] = idx
    return keep


# --------------------------------------------------------------------------- removal

def _shrink_conv(conv: nn.Conv1d, out_idx: torch.Tensor | None,
                 in_idx: torch.Tensor | None) -> nn.Conv1d:
    """A copy of ``conv`` keeping output channels ``out_idx`` and inputs ``in_idx``."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    depthwise = conv.groups > 1
    if depthwise:  # out == in == groups: one index set for both
        idx = out_idx if out_idx is not None else in_idx
        w, b = w[idx], (b[idx] if b is not None else None)
        new = nn.Conv1d(len(idx), len(idx), conv.kernel_size[0], stride=conv.stride[0],
                        padding=conv.padding[0], groups=len(idx), bias=b is not None)
    else:
        if out_idx is not None:
            w, b = w[out_idx], (b[out_idx] if b is not None else None)
        if in_idx is not None:
            w = w[:, in_idx]
        new = nn.Conv1d(w.shape[1], w.shape[0], conv.kernel_size[0], stride=conv.stride[0],
                        padding=conv.padding[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _shrink_bn(bn: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A copy of BatchNorm ``bn`` keeping channels ``idx`` (Identity passes through)."""
    if not isinstance(bn, nn.BatchNorm1d):
        return bn
    new = nn.BatchNorm1d(len(idx), eps=bn.eps, momentum=bn.momentum)
    new.weight.data.copy_(bn.weight.detach()[idx])
    new.bias.data.copy_(bn.bias.detach()[idx])
    new.running_mean.copy_(bn.running_mean[idx])
    new.running_var.copy_(bn.running_var[idx])
    return new


def remove_channels(model: Student, keep: dict[int, torch.Tensor]) -> Student:
    """A physically smaller copy of ``model`` keeping channels ``keep[space]``."""
    new = copy.deepcopy(model).eval()
    k0 = keep[0]
    new.stem = _shrink_conv(new.stem, k0, None)
    new.stem_bn = _shrink_bn(new.stem_bn, k0)
    for i, block in enumerate(new.blocks):
        k_in, k_out = keep[i], keep[i + 1]
        block.dw = _shrink_conv(block.dw, None, k_in)
        block.dw_bn = _shrink_bn(block.dw_bn, k_in)
        block.pw = _shrink_conv(block.pw, k_out, k_in)
        block.bn = _shrink_bn(block.bn, k_out)
    new.head = _shrink_conv(new.head, None, keep[len(new.blocks)])
    return new.train(model.training)


def channel_mask_hooks(model: Student, keep: dict[int, torch.Tensor]) -> list:
    """Forward hooks that make ``model`` compute what :func:`remove_channels` would.

    Every non-kept channel is zeroed after its space's activation and after the
    consuming block's depthwise conv + BatchNorm (whose shift would otherwise
    leak a constant into the next pointwise conv).
    """
    points = [(model.stem_act, 0)] + [(b.act, i + 1) for i, b in enumerate(model.blocks)]
    points += [(b.dw_bn, i) for i, b in enumerate(model.blocks)]
    widths = [model.get_submodule(s.producer).out_channels for s in spaces(model)]
    handles = []
    for module, space in points:
        mask = torch.zeros(widths[space])
        mask[keep[space]] = 1.0
        handles.append(module.register_forward_hook(
            lambda _m, _inp, out, m=mask: out * m[None, :, None]))
    return handles


def structured(model: Student, amount: float, *, multiple: int = 4) -> Student:
    """Remove ``amount`` of the channels of every space by filter L1 (no fine-tuning)."""
    return remove_channels(model, select_channels(model, amount, multiple=multiple))


# --------------------------------------------------------------------------- delayed masking

def group_norms(model: Student) -> dict[int, torch.Tensor]:
    """Per space and channel: L2 norm of the producing filter and its BatchNorm affine."""
    out = {}
    for sp in spaces(model):
        w = model.get_submodule(sp.producer).weight
        sq = w.pow(2).sum(dim=(1, 2))
        bn = model.get_submodule(sp.bn)
        if isinstance(bn, nn.BatchNorm1d):
            sq = sq + bn.weight.pow(2) + bn.bias.pow(2)
        out[sp.index] = torch.sqrt(sq + 1e-12)
    return out


def delayed_masking(model: Student, teacher: nn.Module, chunks: np.ndarray, amount: float, *,
                    steps: int, strength: float = 2e-4, delay: float = 0.2, ramp: float = 0.3,
                    multiple: int = 4, batch_size: int = 16, lr: float = 5e-4) -> Student:
    """Group-lasso penalty ramped in, then channels masked, fine-tuned and removed.

    The first ``delay`` of the first half of ``steps`` trains with no penalty,
    the next ``ramp`` raises it linearly to ``strength``; the weakest channels
    by group norm are then masked for the second half and finally removed.
    """
    student = copy.deepcopy(model)
    half = max(1, steps // 2)

    def penalty(step: int) -> torch.Tensor:
        frac = min(1.0, max(0.0, (step / half - delay) / max(ramp, 1e-6)))
        if frac == 0.0:
            return torch.zeros(())
        norms = group_norms(student)
        return strength * frac * sum(n.sum() for n in norms.values())

    distill(student, teacher, chunks, steps=half, batch_size=batch_size, lr=lr,
            penalty=penalty)
    scores = {i: n.detach() for i, n in group_norms(student).items()}
    keep = select_channels(student, amount, multiple=multiple, scores=scores)
    hooks = channel_mask_hooks(student, keep)
    distill(student, teacher, chunks, steps=steps - half, batch_size=batch_size, lr=lr)
    for h in hooks:
        h.remove()
    return remove_channels(student.eval(), keep)


# --------------------------------------------------------------------------- pipelines

def prune(model: Student, method: str, amount: float, *, teacher: nn.Module | None = None,
          chunks: np.ndarray | None = None, steps: int = 0, scope: str = "global",
          multiple: int = 4, batch_size: int = 16, lr: float = 5e-4) -> Student:
    """Prune ``model`` by ``method`` and fine-tune ``steps`` steps by distillation.

    Parameters
    ----------
    model : Student
        The FP32 parent (not modified).
    method : {"unstructured", "structured", "delayed"}
        Technique (see the module docstring).
    amount : float
        Fraction of weights (unstructured) or channels (structured) removed.
    teacher : nn.Module, optional
        Distillation target; default the unpruned parent.
    chunks : ndarray, optional
        ``[M, T]`` normalised real chunks; required when ``steps > 0``.
    steps : int
        Fine-tuning steps after pruning (delayed masking: total steps).

    Returns
    -------
    Student
        The pruned, fine-tuned copy.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r} (choose from {', '.join(METHODS)})")
    if steps > 0 and chunks is None:
        raise ValueError("fine-tuning needs calibration/distillation chunks (--data)")
    teacher = teacher if teacher is not None else copy.deepcopy(model).eval()
    after: Callable[[int], None] | None = None
    if method == "unstructured":
        student = copy.deepcopy(model)
        masks = unstructured_masks(student, amount, scope)
        apply_masks(student, masks)
        after = lambda _s: apply_masks(student, masks)  # noqa: E731 - tiny closure
    elif method == "structured":
        student = structured(model, amount, multiple=multiple)
    else:
        if chunks is None or steps <= 0:
            raise ValueError("delayed masking trains while it prunes: give --data and --steps")
        return delayed_masking(model, teacher, chunks, amount, steps=steps, multiple=multiple,
                               batch_size=batch_size, lr=lr)
    if steps > 0 and chunks is not None:
        distill(student, teacher, chunks, steps=steps, batch_size=batch_size, lr=lr,
                after_step=after)
    return student.eval()


def iterative(model: Student, method: str, amounts: list[float], *, chunks: np.ndarray,
              steps_per_stage: int, **kw: object) -> Student:
    """Prune -> distill repeatedly to each amount of ``amounts`` (teacher: the parent)."""
    teacher = copy.deepcopy(model).eval()
    student = model
    for amount in amounts:
        # structured amounts are cumulative fractions of the parent's width
        stage = amount
        if method == "structured" and student is not model:
            done = 1.0 - mean_width(student) / mean_width(model)
            stage = 1.0 - (1.0 - amount) / max(1e-6, 1.0 - done)
        student = prune(student, method, stage, teacher=teacher, chunks=chunks,
                        steps=steps_per_stage, **kw)  # type: ignore[arg-type]
        log.info("iterative %s: amount %.2f, params %d, non-zero %d", method, amount,
                 count_params(student), count_nonzero(student))
    return student


def mean_width(model: Student) -> float:
    """Mean channel width over all spaces."""
    return float(np.mean([model.get_submodule(s.producer).out_channels for s in spaces(model)]))


# --------------------------------------------------------------------------- command line

def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tools prune``."""
    p = sub.add_parser("prune", help="prune a student and fine-tune it by distillation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="student checkpoint (tools train) or .pt")
    p.add_argument("--method", choices=METHODS, default="structured")
    p.add_argument("--amount", type=float, nargs="+", default=[0.5],
                   help="fraction removed; several values = iterative schedule")
    p.add_argument("--scope", choices=("global", "layer"), default="global")
    p.add_argument("--data", nargs="*", default=[], help="pod5 files/folders or .npz chunks")
    p.add_argument("--chunk-size", type=int, default=1200)
    p.add_argument("--max-chunks", type=int, default=2048)
    p.add_argument("--steps", type=int, default=0, help="fine-tuning steps per stage")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--multiple", type=int, default=4, help="round kept channels to this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="pruned student .pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tools prune``."""
    torch.set_num_threads(max(1, args.threads))
    model, meta = load_student(args.checkpoint)
    chunks = None
    if args.data:
        chunks = load_chunks(args.data, chunk_size=args.chunk_size, max_chunks=args.max_chunks)
    elif args.steps > 0 or args.method == "delayed":
        raise ValueError("fine-tuning needs real chunks: give --data POD5|NPZ")
    kw = dict(scope=args.scope, multiple=args.multiple, batch_size=args.batch_size, lr=args.lr)
    if len(args.amount) > 1:
        student = iterative(model, args.method, args.amount, chunks=chunks,  # type: ignore
                            steps_per_stage=args.steps, **kw)
    else:
        student = prune(model, args.method, args.amount[0], chunks=chunks, steps=args.steps,
                        **kw)  # type: ignore[arg-type]
    save_student(student, args.out, parent=str(args.checkpoint), method=args.method,
                 amount=args.amount, steps=args.steps, parent_meta={
                     k: v for k, v in meta.items() if isinstance(v, (str, int, float))})
    print(f"{args.out}: {args.method} {args.amount}: params {count_params(model)} -> "
          f"{count_params(student)} (non-zero {count_nonzero(student)}, "
          f"sparsity {sparsity(student):.2f})")
    return 0
