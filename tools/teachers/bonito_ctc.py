"""bonito CTC convolutional models (TargetCall's tiny peers), built from the weights' shapes.

TargetCall's ``config.toml`` describes a different network than its ``weights_1.tar``
holds (see ``shared/data/r9.4.1/peers/targetcall/FORMAT.md``), so the layers are read
off the state dict: blocks ``encoder.encoder.<b>``, each a list of conv units
``conv.<u>`` (dense ``conv.weight`` or separable ``depthwise.weight`` +
``pointwise.weight``, no bias) followed by their BatchNorm at ``conv.<u+1>``
(eps 1e-3) and ReLU; padding ``k // 2``; only the first block strides (the config's
first ``[[block]]`` stride, 3). The decoder is a 1x1 conv with bias to the classes,
then ``log_softmax``. Residual connections are not supported (TargetCall disables
them); a state dict holding any other key is refused.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecall.errors import ModelError

_UNIT = re.compile(r"^encoder\.encoder\.(\d+)\.conv\.(\d+)\.(.+)$")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class ConvUnit(nn.Module):
    """Dense or time-channel separable conv (no bias) -> BatchNorm1d -> ReLU."""

    def __init__(self, weights: dict[str, np.ndarray], bn: dict[str, np.ndarray],
                 stride: int, where: str) -> None:
        super().__init__()
        if "conv.weight" in weights:
            w = weights["conv.weight"]
            self.conv: nn.Module = _conv(w, stride)
            self.macs = int(np.prod(w.shape))
        elif "depthwise.weight" in weights and "pointwise.weight" in weights:
            dw, pw = weights["depthwise.weight"], weights["pointwise.weight"]
            self.conv = nn.Sequential(_conv(dw, stride, groups=dw.shape[0]), _conv(pw, 1))
            self.macs = int(np.prod(dw.shape) + np.prod(pw.shape))
        else:
            raise ModelError(f"{where}: conv unit with tensors {sorted(weights)} is neither "
                             "dense nor separable")
        self.bn = nn.BatchNorm1d(bn["weight"].shape[0], eps=1e-3)
        with torch.no_grad():
            for key in _BN_KEYS:
                getattr(self.bn, key).copy_(torch.from_numpy(np.array(bn[key], np.float32)))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv -> BN -> ReLU."""
        return self.act(self.bn(self.conv(x)))


def _conv(w: np.ndarray, stride: int, groups: int = 1) -> nn.Conv1d:
    """A bias-free Conv1d holding ``w`` (out, in/groups, k), 'same' padding."""
    out, inp, k = w.shape
    conv = nn.Conv1d(inp * groups, out, k, stride=stride, padding=k // 2, groups=groups,
                     bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
    return conv


class BonitoCTC(nn.Module):
    """The conv encoder + 1x1 decoder; forward maps [N, 1, T] -> log-probs [N, T', C]."""

    def __init__(self, units: list[ConvUnit], decoder: nn.Conv1d, stride: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*units)
        self.decoder = decoder
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Signal -> per-frame log_softmax over the classes (index 0 = blank)."""
        return torch.log_softmax(self.decoder(self.encoder(x)).transpose(1, 2), dim=2)

    def macs_per_sample(self) -> float:
        """Multiply-accumulates per input sample (all layers after the strided first)."""
        first = self.encoder[0].macs / self.stride
        rest = sum(u.macs for u in list(self.encoder)[1:]) + self.decoder.weight.numel()
        return first + rest / self.stride

    def summary(self) -> str:
        """One-line description: blocks, units, widths."""
        widths = [u.bn.num_features for u in self.encoder]
        return (f"{len(self.encoder)} conv units (BN, ReLU; widths {min(widths)}-{max(widths)}), "
                f"stride {self.stride}, 1x1 decoder to {self.decoder.out_channels} classes")


def _group_units(sd: dict[str, np.ndarray], where: str
                 ) -> dict[int, dict[int, dict[str, np.ndarray]]]:
    """``{block: {unit index: {rest of key: array}}}`` from the encoder keys."""
    blocks: dict[int, dict[int, dict[str, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    for key, arr in sd.items():
        if key.startswith("decoder."):
            continue
        m = _UNIT.match(key)
        if m is None:
            raise ModelError(f"{where}: unsupported tensor {key} (only TargetCall-style "
                             "no-skip conv blocks are imported)")
        blocks[int(m.group(1))][int(m.group(2))][m.group(3)] = arr
    if not blocks:
        raise ModelError(f"{where}: no encoder.encoder.* tensors in the state dict")
    return blocks


def build_ctc_model(sd: dict[str, np.ndarray], cfg: dict[str, Any],
                    where: str = "model") -> BonitoCTC:
    """A ready (eval mode) :class:`BonitoCTC` from a bonito CTC state dict."""
    blocks = [cfg_b for cfg_b in cfg.get("block", []) if isinstance(cfg_b, dict)]
    first = blocks[0].get("stride", [3]) if blocks else [3]
    stride = int(first[0] if isinstance(first, list) else first)
    units: list[ConvUnit] = []
    grouped = _group_units(sd, where)
    for b in sorted(grouped):
        entries = grouped[b]
        for u in sorted(entries):
            parts = entries[u]
            if not any("." in k for k in parts):
                continue  # a BatchNorm entry, taken with its conv
            bn = entries.get(u + 1, {})
            if any(k not in bn for k in _BN_KEYS):
                raise ModelError(f"{where}: block {b} unit {u} has no BatchNorm at conv.{u + 1}")
            units.append(ConvUnit(parts, bn, stride if not units else 1, f"{where} block {b}"))
    w, bias = sd.get("decoder.layers.0.weight"), sd.get("decoder.layers.0.bias")
    if w is None or bias is None or w.ndim != 3:
        raise ModelError(f"{where}: decoder.layers.0.weight/bias (1x1 conv) missing")
    width = units[-1].bn.num_features
    if w.shape[1] != width or w.shape[2] != 1:
        raise ModelError(f"{where}: decoder weight has shape {'x'.join(map(str, w.shape))}, "
                         f"the encoder ends with {width} channels")
    dec = nn.Conv1d(width, w.shape[0], 1)
    with torch.no_grad():
        dec.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
        dec.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
    return BonitoCTC(units, dec, stride).eval()
