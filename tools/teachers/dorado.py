"""dorado/bonito CRF models as torch modules, built from their ``config.toml`` and tensors.

The network is bonito's ``bonito.crf`` serial encoder, described as data: each
``[[encoder.sublayers]]`` entry (v4 layout) names a registered layer type
(:data:`LAYERS`), which builds itself from its config, lists the tensors it needs
with their shapes, and writes itself back to a config (:meth:`Layer.to_config`).
The pre-v4 ``rnn_encoder`` layout (``[encoder] features/winlen/stride/...``, e.g.
dorado's R9.4.1 fast v3.4) is first expanded into the same sublayer list.

Tensors are named by the position of their layer: bonito state dicts use the
sublayer index under ``encoder.``; dorado's ``.tensor`` files number the layers
without the parameter-free clamps (conv 0-2, permute 3, LSTMs 4-8, linear 9, 10).
dorado folds BatchNorm into the convolutions when it exports, so a convolution
whose ``norm`` tensors are absent runs without a norm.

:class:`CRFModel` maps ``[N, 1, T]`` signal to ``[N, T / stride, 4**state_len * 5]``
scores in bonito's blank-expanded layout: per destination state ``s`` column 0 is
"stay" (the blank) and column ``1 + k`` the move from state
``k * 4**(state_len-1) + s // 4`` emitting base ``s % 4``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from edgecall.errors import ModelError

log = logging.getLogger(__name__)

LAYERS: dict[str, type[Layer]] = {}
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
}
#: Layer types bonito knows that this importer does not build (named in the error).
UNSUPPORTED = ("transformerencoderlayer", "stack", "linearupsample", "gru", "mamba")


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make ``cls`` buildable from ``type = cls.kind``."""
    LAYERS[cls.kind] = cls
    return cls


def _activation(name: str | None, where: str) -> nn.Module:
    """An activation module by bonito name (None -> identity)."""
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ModelError(f"{where}: unknown activation {name!r} "
                         f"(known: {', '.join(sorted(ACTIVATIONS))})")
    return ACTIVATIONS[name]()


class Layer(nn.Module):
    """A registered layer: built from config, lists its tensors, writes its config back."""

    kind: ClassVar[str] = ""
    #: axes order it needs on input (None = any), e.g. ("T", "N", "C") for LSTMs.
    needs: ClassVar[tuple[str, ...] | None] = None

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Required tensors (names relative to the layer) and their shapes."""
        return {}

    def optional_tensors(self) -> dict[str, tuple[int, ...]]:
        """Tensors used when present (all or none), e.g. an unfolded BatchNorm."""
        return {}

    def load(self, found: dict[str, np.ndarray]) -> None:
        """Copy ``found`` (relative names, shapes checked) into the parameters."""
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        with torch.no_grad():
            for name, arr in found.items():
                own[name].copy_(torch.from_numpy(np.array(arr, np.float32)))

    def axes_out(self, axes: tuple[str, ...]) -> tuple[str, ...]:
        """Axis labels after this layer."""
        return axes

    def stride(self) -> int:
        """Frames in per frame out."""
        return 1

    def macs_per_frame(self) -> int:
        """Multiply-accumulates per output frame."""
        return 0

    def to_config(self) -> dict[str, Any]:
        """The ``[[encoder.sublayers]]`` entry that builds this layer."""
        return {"type": self.kind}


@register
class Convolution(Layer):
    """Conv1d (+ BatchNorm when its tensors are present) + activation, on [N, C, T]."""

    kind = "convolution"
    needs = ("N", "C", "T")

    def __init__(self, insize: int, size: int, winlen: int, stride: int = 1,
                 padding: int | None = None, bias: bool = True, activation: str | None = None,
                 norm: str | None = None, **_: Any) -> None:
        super().__init__()
        pad = winlen // 2 if padding is None else int(padding)
        self.cfg = {"insize": insize, "size": size, "winlen": winlen, "stride": stride,
                    "padding": pad, "bias": bias, "activation": activation, "norm": norm}
        self.conv = nn.Conv1d(insize, size, winlen, stride=stride, padding=pad, bias=bias)
        if norm not in (None, "batchnorm"):
            raise ModelError(f"convolution: unknown norm {norm!r}")
        self.norm: nn.Module = nn.Identity()
        self.activation = _activation(activation, "convolution")

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """conv.weight (+ conv.bias)."""
        c = self.cfg
        out = {"conv.weight": (c["size"], c["insize"], c["winlen"])}
        if c["bias"]:
            out["conv.bias"] = (c["size"],)
        return out

    def optional_tensors(self) -> dict[str, tuple[int, ...]]:
        """The BatchNorm's tensors, absent when dorado folded them into the conv."""
        if self.cfg["norm"] != "batchnorm":
            return {}
        n = (self.cfg["size"],)
        return {f"norm.{k}": n for k in ("weight", "bias", "running_mean", "running_var")}

    def load(self, found: dict[str, np.ndarray]) -> None:
        """Create the BatchNorm when its tensors came with the weights."""
        if "norm.weight" in found:
            self.norm = nn.BatchNorm1d(self.cfg["size"])
        super().load(found)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv -> norm -> activation."""
        return self.activation(self.norm(self.conv(x)))

    def stride(self) -> int:
        """The conv's stride."""
        return int(self.cfg["stride"])

    def macs_per_frame(self) -> int:
        """out x in x k per output frame."""
        c = self.cfg
        return int(c["size"] * c["insize"] * c["winlen"])

    def to_config(self) -> dict[str, Any]:
        """Its sublayer entry."""
        return {"type": self.kind, **{k: v for k, v in self.cfg.items() if v is not None}}


@register
class Clamp(Layer):
    """Clip activations to [min, max]."""

    kind = "clamp"

    def __init__(self, min: float, max: float, **_: Any) -> None:  # noqa: A002 - config keys
        super().__init__()
        self.lo, self.hi = float(min), float(max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """clamp."""
        return torch.clamp(x, self.lo, self.hi)

    def to_config(self) -> dict[str, Any]:
        """Its sublayer entry."""
        return {"type": self.kind, "min": self.lo, "max": self.hi}


@register
class Permute(Layer):
    """Reorder axes (bonito uses [2, 0, 1]: [N, C, T] -> time-major [T, N, C])."""

    kind = "permute"

    def __init__(self, dims: list[int], **_: Any) -> None:
        super().__init__()
        self.dims = [int(d) for d in dims]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """permute."""
        return x.permute(*self.dims)

    def axes_out(self, axes: tuple[str, ...]) -> tuple[str, ...]:
        """The permuted labels."""
        return tuple(axes[d] for d in self.dims)

    def to_config(self) -> dict[str, Any]:
        """Its sublayer entry."""
        return {"type": self.kind, "dims": self.dims}


@register
class LSTM(Layer):
    """One single-layer LSTM on time-major [T, N, C], optionally run backwards in time."""

    kind = "lstm"
    needs = ("T", "N", "C")

    def __init__(self, size: int, insize: int, bias: bool = True, reverse: bool | int = False,
                 **_: Any) -> None:
        super().__init__()
        self.size, self.insize, self.bias, self.reverse = size, insize, bool(bias), bool(reverse)
        self.rnn = nn.LSTM(insize, size, bias=self.bias)

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """rnn.weight_ih_l0, weight_hh_l0 (+ both biases)."""
        g = 4 * self.size
        out = {"rnn.weight_ih_l0": (g, self.insize), "rnn.weight_hh_l0": (g, self.size)}
        if self.bias:
            out |= {"rnn.bias_ih_l0": (g,), "rnn.bias_hh_l0": (g,)}
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run (flipped in time when reverse)."""
        if self.reverse:
            return self.rnn(x.flip(0))[0].flip(0)
        return self.rnn(x)[0]

    def macs_per_frame(self) -> int:
        """4 gates x size x (insize + size)."""
        return 4 * self.size * (self.insize + self.size)

    def to_config(self) -> dict[str, Any]:
        """Its sublayer entry."""
        return {"type": self.kind, "size": self.size, "insize": self.insize, "bias": self.bias,
                "reverse": int(self.reverse)}


@register
class Linear(Layer):
    """A linear map on the last axis (bonito's decomposition before the CRF head)."""

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 **_: Any) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """linear.weight (+ bias)."""
        lin = self.linear
        out = {"linear.weight": (lin.out_features, lin.in_features)}
        if lin.bias is not None:
            out["linear.bias"] = (lin.out_features,)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T + b."""
        return self.linear(x)

    def macs_per_frame(self) -> int:
        """in x out."""
        return self.linear.in_features * self.linear.out_features

    def to_config(self) -> dict[str, Any]:
        """Its sublayer entry."""
        lin = self.linear
        return {"type": self.kind, "in_features": lin.in_features,
                "out_features": lin.out_features, "bias": lin.bias is not None}


@register
class LinearCRFEncoder(Linear):
    """The CRF head: linear (+ activation, * scale), blank score expanded into the layout."""

    kind = "linearcrfencoder"

    def __init__(self, insize: int, n_base: int, state_len: int, bias: bool = True,
                 scale: float | None = None, activation: str | None = None,
                 blank_score: float | None = None, expand_blanks: bool = True,
                 permute: list[int] | None = None, **_: Any) -> None:
        size = n_base ** (state_len + 1) if blank_score is not None \
            else (n_base + 1) * n_base ** state_len
        super().__init__(insize, size, bias)
        self.n_base, self.state_len = int(n_base), int(state_len)
        self.scale, self.activation_name = scale, activation
        self.activation = _activation(activation, "linearcrfencoder")
        self.blank_score, self.expand_blanks = blank_score, bool(expand_blanks)
        self.permute = [int(d) for d in permute] if permute else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [..., 4**state_len * 5] (blank column 0 of each state)."""
        s = self.activation(self.linear(x))
        if self.scale is not None:
            s = s * float(self.scale)
        if self.blank_score is not None and self.expand_blanks:
            lead = s.shape[:-1]
            s = s.reshape(*lead, -1, self.n_base)
            s = nn.functional.pad(s, (1, 0), value=float(self.blank_score))
            s = s.reshape(*lead, -1)
        if self.permute is not None:
            s = s.permute(*self.permute)
        return s

    def axes_out(self, axes: tuple[str, ...]) -> tuple[str, ...]:
        """Permuted labels when the head permutes."""
        return tuple(axes[d] for d in self.permute) if self.permute else axes

    def to_config(self) -> dict[str, Any]:
        """Its sublayer entry."""
        cfg: dict[str, Any] = {"type": self.kind, "insize": self.linear.in_features,
                               "n_base": self.n_base, "state_len": self.state_len,
                               "bias": self.linear.bias is not None,
                               "expand_blanks": self.expand_blanks}
        for key, val in (("scale", self.scale), ("activation", self.activation_name),
                         ("blank_score", self.blank_score), ("permute", self.permute)):
            if val is not None:
                cfg[key] = val
        return cfg


def _simple(kind_: str, factory: Callable[[], nn.Module]) -> type[Layer]:
    """A parameter-free activation layer registered as ``kind_``."""

    class _Act(Layer):
        kind = kind_

        def __init__(self, **_: Any) -> None:
            super().__init__()
            self.fn = factory()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """The activation."""
            return self.fn(x)

    _Act.__name__ = f"Act_{kind_}"
    _Act.__doc__ = f"Standalone {kind_} activation."
    return register(_Act)


for _name, _factory in ACTIVATIONS.items():
    _simple(_name, _factory)


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class CRFConfig:
    """What the importer needs from a bonito.crf config besides the layers."""

    sublayers: list[dict[str, Any]]
    state_len: int
    alphabet: str


def rnn_encoder_sublayers(enc: dict[str, Any], n_base: int, state_len: int,
                          insize: int = 1) -> list[dict[str, Any]]:
    """Bonito's pre-v4 ``rnn_encoder`` (``[encoder]`` without sublayers) as a sublayer list."""
    act, norm = enc.get("activation", "swish"), enc.get("norm")
    feat, layers = int(enc.get("features", 768)), int(enc.get("num_layers", 5))
    rnn_type = enc.get("rnn_type", "lstm")
    winlen, stride = int(enc.get("winlen", 19)), int(enc.get("stride", 5))
    conv = {"type": "convolution", "bias": True, "activation": act, "norm": norm}
    subs: list[dict[str, Any]] = [
        conv | {"insize": insize, "size": 4, "winlen": 5, "stride": 1},
        conv | {"insize": 4, "size": 16, "winlen": 5, "stride": 1},
        conv | {"insize": 16, "size": feat, "winlen": winlen, "stride": stride},
        {"type": "permute", "dims": [2, 0, 1]},
    ]
    subs += [{"type": rnn_type, "size": feat, "insize": feat, "reverse": (layers - i) % 2}
             for i in range(layers)]
    subs.append({"type": "linearcrfencoder", "insize": feat, "n_base": n_base,
                 "state_len": state_len, "activation": "tanh", "scale": enc.get("scale"),
                 "blank_score": enc.get("blank_score"),
                 "expand_blanks": enc.get("expand_blanks", True)})
    return subs


def _flatten(enc: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Sublayers of a (named)serial encoder in order; unsupported types stop with an error."""
    kind = enc.get("type", "serial")
    if kind == "serial":
        return [s for sub in enc.get("sublayers", []) for s in _flatten(sub, where)]
    if kind == "namedserial":
        return [s for key, sub in enc.items() if isinstance(sub, dict)
                for s in _flatten(sub, where)]
    if kind in LAYERS:
        return [enc]
    inner = enc.get("layer", {}).get("type") if isinstance(enc.get("layer"), dict) else None
    named = f"{kind!r} of {inner!r} layers" if inner else repr(kind)
    raise ModelError(f"{where}: unsupported layer type {named}; the importer builds "
                     f"{', '.join(sorted(k for k in LAYERS if k not in ACTIVATIONS))} "
                     "(CRF-LSTM models), not transformer models")


def parse_crf_config(cfg: dict[str, Any], where: str) -> CRFConfig:
    """A bonito.crf ``config.toml`` (dict) -> sublayer list, state_len, alphabet."""
    model = cfg.get("model", {})
    labels = cfg.get("labels", {}).get("labels") or model.get("seqdist", {}).get("alphabet")
    alphabet = "".join(labels or ["N", "A", "C", "G", "T"])
    n_base = len(alphabet) - 1
    state_len = cfg.get("global_norm", {}).get("state_len") \
        or model.get("seqdist", {}).get("state_len")
    enc = model.get("encoder") if isinstance(model.get("encoder"), dict) else cfg.get("encoder")
    if not isinstance(enc, dict):
        raise ModelError(f"{where}: config.toml has no [encoder] table")
    if "sublayers" in enc or enc.get("type") in ("serial", "namedserial"):
        subs = _flatten(enc, where)
    elif "features" in enc or "winlen" in enc:
        if state_len is None:
            raise ModelError(f"{where}: config.toml has no [global_norm] state_len")
        insize = int(cfg.get("input", {}).get("features", 1))
        subs = rnn_encoder_sublayers(enc, n_base, int(state_len), insize)
    else:
        raise ModelError(f"{where}: [encoder] is neither a sublayer list nor bonito's "
                         "rnn_encoder layout")
    heads = [s for s in subs if s.get("type") == "linearcrfencoder"]
    if not heads:
        raise ModelError(f"{where}: no linearcrfencoder (CRF head) among the encoder layers")
    state_len = int(heads[-1].get("state_len", state_len or 0))
    return CRFConfig(subs, state_len, alphabet)


# --------------------------------------------------------------------------- model

def tensor_prefixes(sublayers: list[dict[str, Any]], dorado: bool) -> list[str]:
    """Name prefix of each sublayer's tensors (dorado files skip the clamps)."""
    out, n = [], 0
    for i, sub in enumerate(sublayers):
        out.append(f"{n}." if dorado else f"encoder.{i}.")
        if sub.get("type") != "clamp":
            n += 1
    return out


class CRFModel(nn.Module):
    """The serial encoder; forward maps [N, 1, T] -> [N, T', C] CRF scores."""

    def __init__(self, layers: list[Layer], state_len: int, alphabet: str = "NACGT") -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.state_len, self.alphabet = state_len, alphabet
        self.stride = math.prod(layer.stride() for layer in layers)
        axes: tuple[str, ...] = ("N", "C", "T")
        for layer in layers:
            if layer.needs is not None and axes != layer.needs:
                raise ModelError(f"layer {layer.kind} needs {''.join(layer.needs)} input, "
                                 f"gets {''.join(axes)}")
            axes = layer.axes_out(axes)
        self.out_perm = [axes.index(a) for a in ("N", "T", "C")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Signal [N, 1, T] -> scores [N, T', 4**state_len * 5]."""
        for layer in self.layers:
            x = layer(x)
        return x.permute(*self.out_perm) if self.out_perm != [0, 1, 2] else x

    def macs_per_sample(self) -> float:
        """Multiply-accumulates per input sample."""
        total, stride = 0.0, 1
        for layer in self.layers:
            stride *= layer.stride()
            total += layer.macs_per_frame() / stride
        return total

    def summary(self) -> str:
        """One-line description of the layer stack."""
        parts: list[str] = []
        for layer in self.layers:
            c = layer.to_config()
            if layer.kind == "convolution":
                parts.append(f"conv {c['size']}/k{c['winlen']}/s{c['stride']}"
                             f"/{c.get('activation')}")
            elif layer.kind == "lstm":
                parts.append(f"lstm{'<' if c['reverse'] else '>'}{c['size']}")
            elif layer.kind == "linearcrfencoder":
                parts.append(f"crf state_len {c['state_len']}")
            elif layer.kind == "linear":
                parts.append(f"linear {c['out_features']}")
            elif layer.kind == "clamp":
                parts.append(f"clamp {layer.lo:g}..{layer.hi:g}")  # type: ignore[attr-defined]
        return ", ".join(parts)

    def to_config(self) -> list[dict[str, Any]]:
        """The sublayer list that rebuilds this model."""
        return [layer.to_config() for layer in self.layers]


def build_layers(sublayers: list[dict[str, Any]], where: str) -> list[Layer]:
    """Instantiate every sublayer from :data:`LAYERS`."""
    layers = []
    for i, sub in enumerate(sublayers):
        kind = sub.get("type")
        if kind not in LAYERS:
            raise ModelError(f"{where}: unsupported layer type {kind!r} (sublayer {i})")
        args = {k: v for k, v in sub.items() if k != "type"}
        try:
            layers.append(LAYERS[kind](**args))
        except TypeError as exc:
            raise ModelError(f"{where}: sublayer {i} ({kind}): {exc}") from None
    return layers


def load_weights(layers: list[Layer], prefixes: list[str], tensors: dict[str, np.ndarray],
                 where: str) -> None:
    """Check every layer's tensors against the config's shapes and load them."""
    used: set[str] = set()
    for layer, prefix in zip(layers, prefixes, strict=True):
        found: dict[str, np.ndarray] = {}
        for name, shape in layer.tensors().items():
            found[name] = _take(tensors, prefix + name, shape, where, layer.kind)
        optional = layer.optional_tensors()
        present = [n for n in optional if prefix + n in tensors]
        if present and len(present) != len(optional):
            missing = sorted(set(optional) - set(present))
            raise ModelError(f"{where}: {prefix}{missing[0]} missing ({layer.kind} has "
                             f"{', '.join(prefix + p for p in present)})")
        for name in present:
            found[name] = _take(tensors, prefix + name, optional[name], where, layer.kind)
        used |= {prefix + n for n in found}
        layer.load(found)
    extra = sorted(k for k in tensors if k not in used and not k.endswith("num_batches_tracked"))
    if extra:
        raise ModelError(f"{where}: tensor {extra[0]} is not used by any layer of the config "
                         f"({len(extra)} unused)")


def _take(tensors: dict[str, np.ndarray], key: str, shape: tuple[int, ...], where: str,
          kind: str) -> np.ndarray:
    """One tensor by key, with its shape checked against the config."""
    if key not in tensors:
        raise ModelError(f"{where}: tensor {key} missing (needed by the {kind} layer)")
    arr = tensors[key]
    if tuple(arr.shape) != tuple(shape):
        raise ModelError(f"{where}: tensor {key} has shape {'x'.join(map(str, arr.shape))}, "
                         f"the config says {'x'.join(map(str, shape))}")
    return arr


def build_crf_model(cfg: dict[str, Any], tensors: dict[str, np.ndarray], *, dorado: bool,
                    where: str = "model") -> CRFModel:
    """A ready (eval mode) :class:`CRFModel` from a config dict and its tensors.

    Parameters
    ----------
    cfg
        The parsed ``config.toml``.
    tensors
        ``{name: array}``: dorado ``.tensor`` names (``dorado=True``) or a bonito
        state dict (keys under ``encoder.``).
    dorado
        Which tensor naming to expect (see the module docstring).
    where
        Prefix of error messages (the model folder).
    """
    parsed = parse_crf_config(cfg, where)
    layers = build_layers(parsed.sublayers, where)
    load_weights(layers, tensor_prefixes(parsed.sublayers, dorado), tensors, where)
    return CRFModel(layers, parsed.state_len, parsed.alphabet).eval()


def config_tensor_shapes(cfg: dict[str, Any], *, dorado: bool = True
                         ) -> dict[str, tuple[int, ...]]:
    """Every tensor a config needs, with its shape (e.g. for synthetic test weights)."""
    parsed = parse_crf_config(cfg, "config")
    layers = build_layers(parsed.sublayers, "config")
    out: dict[str, tuple[int, ...]] = {}
    for layer, prefix in zip(layers, tensor_prefixes(parsed.sublayers, dorado), strict=True):
        out |= {prefix + n: s for n, s in layer.tensors().items()}
    return out
