"""Lowering an ONNX graph onto edgecall's kernels: tensors, steps, fusion and buffer plans.

Used by :mod:`edgecall.engines.native`. Tensors are physically channels-last
``[N, F, C]`` (float32, or int8 with a zero point for quantised ones); ``layout``
remembers the ONNX logical order (``NCT`` for conv activations, ``NTC`` after the
final Transpose). Convolutions and Adds are kept *pending* while the next node
can still be fused into them (BatchNorm, bias, activation, residual Add,
QuantizeLinear), then emitted as one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecall.errors import UnsupportedGraph
from edgecall.kernels_backend import Kernels, pack_pointwise, pack_qpointwise, pad_channels

ACT_NONE, ACT_RELU, ACT_CLIP, ACT_SILU = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class QParams:
    """Per-tensor activation quantisation (scale, zero point, integer range).

    Stored tensors are int8: uint8 tensors are shifted by -128 (zp and range
    included), which leaves every QDQ computation unchanged.
    """

    scale: float
    zp: int
    qmin: int
    qmax: int

    def quant(self, v: float) -> int:
        """Quantised value of the real number ``v``."""
        q = int(np.rint(np.float32(v) / np.float32(self.scale))) + self.zp
        return min(max(q, self.qmin), self.qmax)


@dataclass(frozen=True, slots=True)
class Tensor:
    """A runtime tensor: id, channels, quantisation and logical layout."""

    tid: int
    channels: int
    q: QParams | None = None
    layout: str = "NCT"


# ---- steps -----------------------------------------------------------------


@dataclass
class Step:
    """One kernel call: reads ``ins`` tensors, writes ``out``."""

    ins: list[int]
    out: int

    def frames(self, f: int) -> int:
        """Output frames for ``f`` input frames."""
        return f

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__} {self.ins} -> {self.out}"


@dataclass
class ConvStep(Step):
    """fp32 or int8 convolution with its fused epilogue."""

    mode: str = "generic"  # generic | depthwise | pointwise | stem
    quant: bool = False
    w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mult: np.ndarray | None = None
    ksize: int = 1
    stride: int = 1
    p0: int = 0
    p1: int = 0
    act: int = ACT_NONE
    lo: float = 0.0
    hi: float = 0.0
    has_res: bool = False
    zp_in: int = 0
    zo: int = 0

    def frames(self, f: int) -> int:
        return (f + self.p0 + self.p1 - self.ksize) // self.stride + 1

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        x, out = v[self.ins[0]], v[self.out]
        res = v[self.ins[1]] if self.has_res else None
        if self.mode == "pointwise":
            m = x.shape[0] * x.shape[1]
            x2, o2 = x.reshape(m, x.shape[2]), out.reshape(m, out.shape[2])
            r2 = res.reshape(m, out.shape[2]) if res is not None else None
            if self.quant:
                k.qpointwise_conv(x2, self.w, self.bias, self.mult, o2, self.zo, int(self.lo),
                                  int(self.hi), threads)
            else:
                k.pointwise_conv(x2, self.w, self.bias, r2, o2, self.act, self.lo, self.hi,
                                 threads)
        elif self.mode == "stem":
            x2 = x.reshape(x.shape[0], x.shape[1])
            if self.quant:
                k.qstem_conv(x2, self.w, self.ksize, self.bias, self.mult, out, self.stride,
                             self.p0, self.zp_in, self.zo, int(self.lo), int(self.hi), threads)
            else:
                k.stem_conv(x2, self.w, self.bias, out, self.stride, self.p0, self.act,
                            self.lo, self.hi, threads)
        elif self.quant:
            fn = k.qdepthwise_conv if self.mode == "depthwise" else k.qconv_generic
            fn(x, self.w, self.bias, self.mult, out, self.stride, self.p0, self.zp_in, self.zo,
               int(self.lo), int(self.hi), threads)
        else:
            fn = k.depthwise_conv if self.mode == "depthwise" else k.conv_generic
            fn(x, self.w, self.bias, res, out, self.stride, self.p0, self.act, self.lo,
               self.hi, threads)

    def describe(self) -> str:
        kind = ("q" if self.quant else "") + self.mode
        extra = f" act={self.act}" + (" +res" if self.has_res else "")
        return f"conv[{kind} k={self.ksize} s={self.stride}{extra}] {self.ins} -> {self.out}"


@dataclass
class FusedDwPwStep(Step):
    """A depthwise conv whose only consumer is a pointwise conv, run in one pass."""

    dw: ConvStep | None = None
    pw: ConvStep | None = None

    def frames(self, f: int) -> int:
        assert self.dw is not None
        return self.dw.frames(f)

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        dw, pw = self.dw, self.pw
        assert dw is not None and pw is not None
        if not pw.quant:
            res = v[self.ins[1]] if pw.has_res else None
            k.dwpw_conv(v[self.ins[0]], dw.w, dw.bias, dw.act, dw.lo, dw.hi, pw.w, pw.bias, res,
                        v[self.out], dw.stride, dw.p0, pw.act, pw.lo, pw.hi, threads)
            return
        k.qdwpw_conv(v[self.ins[0]], dw.w, dw.bias, dw.mult, dw.zp_in, dw.zo, int(dw.lo),
                     int(dw.hi), pw.w, pw.bias, pw.mult, v[self.out], dw.stride, dw.p0, pw.zo,
                     int(pw.lo), int(pw.hi), threads)

    def describe(self) -> str:
        assert self.dw is not None and self.pw is not None
        q = "q" if self.dw.quant else ""
        extra = f" act={self.pw.act}" + (" +res" if self.pw.has_res else "")
        return (f"conv[{q}depthwise+{q}pointwise k={self.dw.ksize}{extra}] {self.ins} -> "
                f"{self.out}")


def fuse_dw_pw(steps: list[Step], output: int) -> list[Step]:
    """Merge depthwise -> pointwise pairs whose middle tensor has no other use."""
    uses: dict[int, int] = {output: 1}
    for s in steps:
        for t in s.ins:
            uses[t] = uses.get(t, 0) + 1
    out: list[Step] = []
    i = 0
    while i < len(steps):
        s = steps[i]
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if (isinstance(s, ConvStep) and s.mode == "depthwise" and not s.has_res
                and isinstance(nxt, ConvStep) and nxt.mode == "pointwise"
                and nxt.quant == s.quant and nxt.ins[0] == s.out and uses.get(s.out) == 1):
            out.append(FusedDwPwStep([*s.ins, *nxt.ins[1:]], nxt.out, dw=s, pw=nxt))
            i += 2
        else:
            out.append(s)
            i += 1
    return out


@dataclass
class QuantizeStep(Step):
    qp: QParams = QParams(1.0, 0, -128, 127)

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        k.quantize(v[self.ins[0]].reshape(-1), v[self.out].reshape(-1), self.qp.scale,
                   self.qp.zp, self.qp.qmin, self.qp.qmax, threads)


@dataclass
class DequantizeStep(Step):
    scale: float = 1.0
    zp: int = 0

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        k.dequantize(v[self.ins[0]].reshape(-1), v[self.out].reshape(-1), self.scale, self.zp,
                     threads)


@dataclass
class RequantizeStep(Step):
    ratio: float = 1.0
    zi: int = 0
    zo: int = 0
    lo: int = -128
    hi: int = 127

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        k.requantize(v[self.ins[0]].reshape(-1), v[self.out].reshape(-1), self.ratio,
                     self.zi, self.zo, self.lo, self.hi, threads)


@dataclass
class QAddStep(Step):
    ra: float = 1.0
    rb: float = 1.0
    za: int = 0
    zb: int = 0
    zo: int = 0
    lo: int = -128
    hi: int = 127

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        a, b, out = (v[i].reshape(-1) for i in (*self.ins, self.out))
        k.qadd(a, b, out, self.ra, self.rb, self.za, self.zb, self.zo, self.lo, self.hi,
               threads)


def _apply_act(y: np.ndarray, act: int, lo: float, hi: float) -> None:
    """In-place activation on a float array."""
    if act == ACT_RELU:
        np.maximum(y, 0, out=y)
    elif act == ACT_CLIP:
        np.clip(y, lo, hi, out=y)
    elif act == ACT_SILU:
        y *= 1.0 / (1.0 + np.exp(-y))


@dataclass
class EltwiseStep(Step):
    """Float elementwise ops (numpy): add/mul of two tensors, or an activation/affine."""

    op: str = "act"  # add | mul | act | sigmoid | affine
    act: int = ACT_NONE
    lo: float = 0.0
    hi: float = 0.0
    a: np.ndarray | None = None  # affine scale per channel
    b: np.ndarray | None = None  # affine shift per channel

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        out, x = v[self.out], v[self.ins[0]]
        if self.op == "add":
            np.add(x, v[self.ins[1]], out=out)
        elif self.op == "mul":
            np.multiply(x, v[self.ins[1]], out=out)
        elif self.op == "sigmoid":
            np.divide(1.0, 1.0 + np.exp(-x), out=out)
        elif self.op == "affine":
            assert self.a is not None and self.b is not None
            np.multiply(x, self.a, out=out)
            out += self.b
        else:
            out[...] = x
        _apply_act(out, self.act, self.lo, self.hi)

    def describe(self) -> str:
        return f"{self.op}[act={self.act}] {self.ins} -> {self.out}"


@dataclass
class ConcatStep(Step):
    """Concatenate tensors along channels (numpy)."""

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        np.concatenate([v[i] for i in self.ins], axis=-1, out=v[self.out])


@dataclass
class SoftmaxStep(Step):
    log: bool = True

    def run(self, v: dict[int, np.ndarray], k: Kernels, threads: int) -> None:
        x, out = v[self.ins[0]], v[self.out]
        np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
        if self.log:
            out -= np.log(np.exp(out).sum(axis=-1, keepdims=True))
        else:
            np.exp(out, out=out)
            out /= out.sum(axis=-1, keepdims=True)


# ---- program and buffer plan ------------------------------------------------


@dataclass
class Program:
    """Lowered graph: steps, tensor metadata and the liveness-based buffer map."""

    steps: list[Step]
    channels: dict[int, int]
    dtypes: dict[int, Any]
    output: int
    buffer_of: dict[int, int] = field(default_factory=dict)
    quantized: bool = False

    def assign_buffers(self) -> None:
        """Share buffers between tensors whose lifetimes do not overlap."""
        last: dict[int, int] = {}
        for i, s in enumerate(self.steps):
            for t in s.ins:
                last[t] = i
        last[self.output] = len(self.steps)
        free: list[int] = []
        nbuf = 0
        for i, s in enumerate(self.steps):
            if free:
                self.buffer_of[s.out] = free.pop()
            else:
                self.buffer_of[s.out] = nbuf
                nbuf += 1
            for t in {*s.ins, s.out}:
                if t != 0 and last.get(t, i) == i and t in self.buffer_of:
                    free.append(self.buffer_of[t])


class Plan:
    """Buffers and views of a program for one batch shape ``(n, t)``."""

    def __init__(self, program: Program, n: int, t: int) -> None:
        self.program = program
        frames = {0: t}
        for s in program.steps:
            frames[s.out] = s.frames(frames[s.ins[0]])
            if frames[s.out] < 1:
                raise ValueError(f"input of {t} samples is too short for this model")
        shapes = {tid: (n, f, program.channels[tid]) for tid, f in frames.items()}
        sizes: dict[int, int] = {}
        for tid, buf in program.buffer_of.items():
            nbytes = int(np.prod(shapes[tid])) * np.dtype(program.dtypes[tid]).itemsize
            sizes[buf] = max(sizes.get(buf, 0), nbytes)
        bufs = {b: np.empty(sz + 64, dtype=np.uint8) for b, sz in sizes.items()}
        self.views: dict[int, np.ndarray] = {}
        for tid, buf in program.buffer_of.items():
            dt = np.dtype(program.dtypes[tid])
            count = int(np.prod(shapes[tid]))
            self.views[tid] = bufs[buf][:count * dt.itemsize].view(dt).reshape(shapes[tid])
        self.n, self.t = n, t

    def execute(self, x: np.ndarray, k: Kernels, threads: int) -> np.ndarray:
        """Run all steps on ``x`` [N, 1, T]; return a copy of the output."""
        views = dict(self.views)
        views[0] = x.reshape(self.n, self.t, 1)
        for s in self.program.steps:
            s.run(views, k, threads)
        return np.array(views[self.program.output], dtype=np.float32, copy=True)


# re-exported for the lowering module
__all__ = ["ACT_CLIP", "ACT_NONE", "ACT_RELU", "ACT_SILU", "ConvStep", "DequantizeStep",
           "ConcatStep", "EltwiseStep", "FusedDwPwStep", "Plan", "Program", "QAddStep", "QParams",
           "QuantizeStep", "RequantizeStep", "SoftmaxStep", "Step", "Tensor", "UnsupportedGraph",
           "pack_pointwise", "pack_qpointwise", "pad_channels"]


def lower(graph: Any, qpack: int = 2) -> Program:
    """Lower an ``onnx.GraphProto`` into a :class:`Program` (see native_lower).

    ``qpack`` is the kernel backend's int8 weight packing (``Kernels.qpack()``).
    """
    from edgecall.engines.native_lower import Lowerer

    return Lowerer(graph, qpack).run()
