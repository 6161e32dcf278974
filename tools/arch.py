"""The student family: depthwise-separable 1-D CTC basecallers (RUBICALL/QuartzNet style).

``stem`` (Conv1d 1 -> C, kernel ``stem_kernel``, stride ``stride``) -> ``depth`` blocks
of [depthwise Conv1d (groups=C) -> BatchNorm -> pointwise 1x1 Conv -> BatchNorm ->
ReLU] -> 1x1 projection to ``n_classes`` -> log_softmax, output ``[N, T/stride, C]``.

Residual connections (``skips=True``) make training converge faster; they are
removed at the end by SkipClip-style distillation into a skip-free copy
(``skips=False``), which is what ships. BatchNorm is folded at export time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchConfig:
    """Hyper-parameters of one student network."""

    channels: int = 128
    depth: int = 8
    kernel: int = 25
    stem_channels: int = 0  # 0 = same as channels
    stem_kernel: int = 15
    stride: int = 3
    n_classes: int = 5
    skips: bool = True
    bn_after_dw: bool = True
    activation: str = "relu"  # relu | silu | relu6

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints and cards)."""
        return asdict(self)


def _act(name: str) -> nn.Module:
    """Activation module by name."""
    return {"relu": nn.ReLU(), "silu": nn.SiLU(), "relu6": nn.ReLU6()}[name]


class Block(nn.Module):
    """Depthwise conv -> (BN) -> pointwise conv -> BN -> activation, optional residual."""

    def __init__(self, c_in: int, c_out: int, kernel: int, cfg: ArchConfig) -> None:
        super().__init__()
        self.dw = nn.Conv1d(c_in, c_in, kernel, padding=kernel // 2, groups=c_in,
                            bias=not cfg.bn_after_dw)
        self.dw_bn = nn.BatchNorm1d(c_in) if cfg.bn_after_dw else nn.Identity()
        self.pw = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        self.act = _act(cfg.activation)
        self.skip = cfg.skips and c_in == c_out
        self.skip_scale = 1.0  # annealed to 0 by SkipClip-style training (not a parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, T] -> [N, C, T]."""
        y = self.bn(self.pw(self.dw_bn(self.dw(x))))
        if self.skip and self.skip_scale > 0:
            y = y + x if self.skip_scale == 1.0 else y + self.skip_scale * x
        return self.act(y)


class Student(nn.Module):
    """Depthwise-separable CTC basecaller: [N, 1, T] -> log-probs [N, T/stride, C]."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c_stem = cfg.stem_channels or cfg.channels
        self.stem = nn.Conv1d(1, c_stem, cfg.stem_kernel, stride=cfg.stride,
                              padding=cfg.stem_kernel // 2, bias=False)
        self.stem_bn = nn.BatchNorm1d(c_stem)
        self.stem_act = _act(cfg.activation)
        blocks = []
        c = c_stem
        for _ in range(cfg.depth):
            blocks.append(Block(c, cfg.channels, cfg.kernel, cfg))
            c = cfg.channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv1d(c, cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-softmax posteriors, [N, T/stride, n_classes]."""
        h = self.stem_act(self.stem_bn(self.stem(x)))
        h = self.blocks(h)
        return torch.log_softmax(self.head(h).transpose(1, 2), dim=-1)


def set_skip_scale(model: nn.Module, scale: float) -> None:
    """Scale every residual connection (1 = full skips, 0 = skip-free network)."""
    for m in model.modules():
        if isinstance(m, Block):
            m.skip_scale = float(scale)


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def macs_per_sample(cfg: ArchConfig) -> float:
    """Multiply-accumulates per input sample (conv layers; BN folded away)."""
    c_stem = cfg.stem_channels or cfg.channels
    per_frame = c_stem * cfg.stem_kernel
    c = c_stem
    for _ in range(cfg.depth):
        per_frame += c * cfg.kernel + c * cfg.channels
        c = cfg.channels
    per_frame += c * cfg.n_classes
    return per_frame / cfg.stride
