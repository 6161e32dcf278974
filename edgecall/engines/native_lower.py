"""Graph lowering for the native engine: ONNX nodes -> fused kernel steps.

Walks the (topologically sorted) ONNX nodes once. Constants and
``DequantizeLinear`` of constants are folded; convolutions, MatMul projections
and Adds stay *pending* while their single consumer can be fused into them
(BatchNormalization, bias Add, Relu/Clip/SiLU, residual Add, QuantizeLinear)
and are emitted as one :class:`~edgecall.engines.native_ops.ConvStep` /
``QAddStep`` when the chain ends. See :mod:`edgecall.engines.native` for the
supported op list; anything else raises UnsupportedGraph naming the op and node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecall.engines import native_ops as ops
from edgecall.engines.native_ops import QParams, Tensor
from edgecall.errors import UnsupportedGraph


@dataclass
class _PConv:
    """A convolution (or MatMul projection) waiting for fusable consumers."""

    x: Tensor
    w: np.ndarray  # float [Cout, Cin/g, K]
    b: np.ndarray  # float [Cout]
    group: int
    stride: int
    p0: int
    p1: int
    wq: np.ndarray | None  # int weights [Cout, Cin/g, K] (QDQ models)
    ws: np.ndarray | None  # per-output-channel weight scales
    layout: str
    act: int = ops.ACT_NONE
    lo: float = 0.0
    hi: float = 0.0
    res: Tensor | None = None

    @property
    def quantizable(self) -> bool:
        return self.x.q is not None and self.wq is not None and self.res is None


@dataclass
class _PAdd:
    """An Add of two tensors waiting for an activation / QuantizeLinear."""

    a: Tensor
    b: Tensor
    act: int = ops.ACT_NONE
    lo: float = 0.0
    hi: float = 0.0


class Lowerer:
    """One-shot ONNX graph -> :class:`~edgecall.engines.native_ops.Program` compiler."""

    def __init__(self, graph: Any, qpack: int = 2) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.qpack = qpack
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.qconsts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.tensors: dict[str, Tensor] = {}
        self.pending: dict[str, _PConv | _PAdd] = {}
        self.steps: list[ops.Step] = []
        self.channels: dict[int, int] = {0: 1}
        self.dtypes: dict[int, Any] = {0: np.float32}
        self.uses: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for out in graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1
        self.node: Any = None

    # ---- helpers -------------------------------------------------------------

    def fail(self, why: str) -> UnsupportedGraph:
        n = self.node
        return UnsupportedGraph(f"native engine cannot run op {n.op_type} (node "
                                f"{n.name or n.output[0]!r}): {why}")

    def attr(self, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def new(self, channels: int, q: QParams | None, layout: str) -> Tensor:
        tid = len(self.channels)
        self.channels[tid] = channels
        self.dtypes[tid] = np.int8 if q is not None else np.float32
        return Tensor(tid, channels, q, layout)

    def emit(self, step: ops.Step) -> None:
        self.steps.append(step)

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def tensor(self, name: str) -> Tensor:
        """The runtime tensor for ``name``, emitting a pending op if needed."""
        if name in self.pending:
            self.tensors[name] = self.finish(name, None)
        if name not in self.tensors:
            raise self.fail(f"input {name!r} is neither a constant nor a computed tensor")
        return self.tensors[name]

    def as_float(self, t: Tensor) -> Tensor:
        """``t`` as a float tensor (dequantising into a new tensor if needed)."""
        if t.q is None:
            return t
        out = self.new(t.channels, None, t.layout)
        self.emit(ops.DequantizeStep([t.tid], out.tid, scale=t.q.scale, zp=t.q.zp))
        return out

    def sole(self, name: str) -> _PConv | _PAdd | None:
        """The pending op producing ``name`` if this node is its only consumer."""
        p = self.pending.get(name)
        return p if p is not None and self.uses.get(name, 0) == 1 else None

    def rename(self, old: str, new: str) -> None:
        """The pending op producing ``old`` now produces ``new`` (a fused node)."""
        self.pending[new] = self.pending.pop(old)

    # ---- driver --------------------------------------------------------------

    def run(self) -> ops.Program:
        inputs = [i.name for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise UnsupportedGraph(f"native engine needs one input, graph has {inputs}")
        self.tensors[inputs[0]] = Tensor(0, 1, None, "NCT")
        missing = [n for n in self.graph.node if n.domain not in ("", "ai.onnx")
                   or not hasattr(self, f"op_{n.op_type}")]
        if missing:  # name an operator we never run (e.g. LSTM) before any layout complaint
            self.node = missing[0]
            kinds = ", ".join(sorted({n.op_type for n in missing}))
            raise self.fail(f"unsupported operator (this graph's unsupported ops: {kinds})")
        for node in self._fuse_silu(list(self.graph.node)):
            self.node = node
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None or (node.domain not in ("", "ai.onnx")):
                raise self.fail("unsupported operator")
            handler(node)
        outs = [o.name for o in self.graph.output]
        if len(outs) != 1:
            raise UnsupportedGraph(f"native engine needs one output, graph has {outs}")
        self.node = self.graph.node[-1]
        out = self.as_float(self.tensor(outs[0]))
        if out.layout != "NTC":
            raise self.fail("the model output must be [N, T, C] (Transpose before the end)")
        if out.tid == 0 or not self.steps:
            raise self.fail("empty graph")
        self.steps = ops.fuse_dw_pw(self.steps, out.tid)
        prog = ops.Program(self.steps, self.channels, self.dtypes, out.tid,
                           quantized=any(np.dtype(d) == np.int8 for d in self.dtypes.values()))
        prog.assign_buffers()
        return prog

    def _fuse_silu(self, nodes: list[Any]) -> list[Any]:
        """Rewrite ``Mul(y, Sigmoid(y))`` into one virtual SiLU node (float graphs)."""
        from onnx import helper

        sig = {n.output[0]: n for n in nodes if n.op_type == "Sigmoid"}
        drop, out = set(), []
        for n in nodes:
            if n.op_type == "Mul" and len(n.input) == 2:
                for y, s in (n.input, n.input[::-1]):
                    sn = sig.get(s)
                    if sn is not None and sn.input[0] == y and self.uses.get(s) == 1:
                        drop.add(id(sn))
                        self.uses[y] -= 1
                        n = helper.make_node("SiLU", [y], list(n.output), name=n.name)
                        break
            out.append(n)
        return [n for n in out if id(n) not in drop]

    # ---- finishing pending ops ---------------------------------------------

    def finish(self, name: str, out_q: QParams | None) -> Tensor:
        """Emit the pending op producing ``name`` (quantised output if ``out_q``)."""
        p = self.pending.pop(name)
        if isinstance(p, _PAdd):
            return self._finish_add(p, out_q)
        return self._finish_conv(p, out_q)

    def _qrange(self, qp: QParams, act: int, lo: float, hi: float) -> tuple[int, int]:
        """Clamp range of ``qp`` narrowed by a ReLU/Clip (Q is monotonic: exact)."""
        qlo, qhi = qp.qmin, qp.qmax
        if act == ops.ACT_RELU:
            qlo = max(qlo, qp.zp)
        elif act == ops.ACT_CLIP:
            qlo, qhi = max(qlo, qp.quant(lo)), min(qhi, qp.quant(hi))
        return qlo, qhi

    def _finish_conv(self, p: _PConv, out_q: QParams | None) -> Tensor:
        cout, cig, k = p.w.shape
        cin = cig * p.group
        if p.x.channels != cin:
            raise self.fail(f"conv expects {cin} input channels, got {p.x.channels}")
        mode = "generic"
        if k == 1 and p.group == 1 and p.stride == 1 and p.p0 == 0 and p.p1 == 0:
            mode = "pointwise"
        elif cin == 1 and p.group == 1 and p.res is None:
            mode = "stem"  # GEMM over overlapping signal windows
        elif p.group == cin == cout and cig == 1:
            mode = "depthwise"
        quant = out_q is not None and p.quantizable and p.act != ops.ACT_SILU
        if quant and out_q is not None:
            return self._emit_qconv(p, mode, out_q)
        x = self.as_float(p.x)
        ins = [x.tid]
        if p.res is not None:
            ins.append(self.as_float(p.res).tid)
        out = self.new(cout, None, p.layout)
        step = ops.ConvStep(ins, out.tid, mode=mode, ksize=k, stride=p.stride, p0=p.p0,
                            p1=p.p1, act=p.act, lo=p.lo, hi=p.hi, has_res=p.res is not None)
        w = p.w.astype(np.float32)
        if mode in ("pointwise", "stem"):
            step.w = ops.pack_pointwise(w[:, :, 0].T if mode == "pointwise" else w[:, 0, :].T)
            step.bias = ops.pad_channels(p.b.astype(np.float32), step.w.shape[0] * 16)
        else:
            step.w = _conv_layout(w, p.group, mode)
            step.bias = np.ascontiguousarray(p.b, dtype=np.float32)
        self.emit(step)
        if out_q is not None:
            qt = self.new(cout, out_q, p.layout)
            self.emit(ops.QuantizeStep([out.tid], qt.tid, qp=out_q))
            return qt
        return out

    def _emit_qconv(self, p: _PConv, mode: str, out_q: QParams) -> Tensor:
        assert p.x.q is not None and p.wq is not None and p.ws is not None
        cout, _, k = p.wq.shape
        sx = np.float32(p.x.q.scale)
        ws = np.broadcast_to(p.ws.astype(np.float32), (cout,))
        bias_scale = sx * ws
        bias = np.rint(p.b.astype(np.float64) / bias_scale).astype(np.int64)
        # padding is the input zero point, so the zero-point correction is exact
        bias -= p.x.q.zp * p.wq.astype(np.int64).sum(axis=(1, 2))
        if np.abs(bias).max(initial=0) >= 2 ** 31:
            raise self.fail("int8 bias does not fit in int32")
        bias = bias.astype(np.int32)
        mult = (bias_scale / np.float32(out_q.scale)).astype(np.float32)
        lo, hi = self._qrange(out_q, p.act, p.lo, p.hi)
        out = self.new(cout, out_q, p.layout)
        step = ops.ConvStep([p.x.tid], out.tid, mode=mode, quant=True, ksize=k,
                            stride=p.stride, p0=p.p0, p1=p.p1, lo=lo, hi=hi,
                            zp_in=p.x.q.zp, zo=out_q.zp)
        wq = p.wq.astype(np.int16)
        if mode in ("pointwise", "stem"):
            step.w = ops.pack_qpointwise(wq[:, :, 0].T if mode == "pointwise" else wq[:, 0, :].T,
                                         self.qpack)
            n = step.w.shape[0] * 16
            step.bias, step.mult = ops.pad_channels(bias, n), ops.pad_channels(mult, n)
        else:
            step.w = _conv_layout(wq, p.group, mode)
            step.bias, step.mult = bias, np.ascontiguousarray(mult)
        self.emit(step)
        return out

    def _finish_add(self, p: _PAdd, out_q: QParams | None) -> Tensor:
        if p.a.channels != p.b.channels:
            raise self.fail("Add of tensors with different channel counts (no broadcasting)")
        layout = p.a.layout
        if out_q is not None and p.a.q is not None and p.b.q is not None:
            lo, hi = self._qrange(out_q, p.act, p.lo, p.hi)
            if p.act not in (ops.ACT_SILU,):
                out = self.new(p.a.channels, out_q, layout)
                so = np.float32(out_q.scale)
                self.emit(ops.QAddStep([p.a.tid, p.b.tid], out.tid,
                                       ra=float(np.float32(p.a.q.scale) / so),
                                       rb=float(np.float32(p.b.q.scale) / so), za=p.a.q.zp,
                                       zb=p.b.q.zp, zo=out_q.zp, lo=lo, hi=hi))
                return out
        a, b = self.as_float(p.a), self.as_float(p.b)
        out = self.new(a.channels, None, layout)
        self.emit(ops.EltwiseStep([a.tid, b.tid], out.tid, op="add", act=p.act, lo=p.lo,
                                  hi=p.hi))
        if out_q is not None:
            qt = self.new(a.channels, out_q, layout)
            self.emit(ops.QuantizeStep([out.tid], qt.tid, qp=out_q))
            return qt
        return out

    # ---- ops -----------------------------------------------------------------

    def op_Identity(self, n: Any) -> None:
        c = self.const(n.input[0])
        if c is not None:
            self.consts[n.output[0]] = c
        elif self.sole(n.input[0]) is not None:
            self.rename(n.input[0], n.output[0])
        else:
            self.tensors[n.output[0]] = self.tensor(n.input[0])

    def op_Constant(self, n: Any) -> None:
        from onnx import numpy_helper

        value = self.attr("value")
        if value is None:
            raise self.fail("only tensor-valued Constant nodes are supported")
        self.consts[n.output[0]] = numpy_helper.to_array(value)

    def _qparams(self, n: Any) -> QParams:
        scale = self.const(n.input[1])
        zp = self.const(n.input[2]) if len(n.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zp is None:
            raise self.fail("quantisation parameters must be constants")
        if scale.size != 1 or zp.size != 1:
            raise self.fail("per-channel activation quantisation is not supported")
        if zp.dtype not in (np.int8, np.uint8):
            raise self.fail(f"{zp.dtype} activations are not supported (int8/uint8 only)")
        shift = 128 if zp.dtype == np.uint8 else 0  # stored as int8: q - 128
        return QParams(float(scale.reshape(())), int(zp.reshape(())) - shift, -128, 127)

    def op_QuantizeLinear(self, n: Any) -> None:
        qp = self._qparams(n)
        src = n.input[0]
        if self.sole(src) is not None:
            self.tensors[n.output[0]] = self.finish(src, qp)
            return
        x = self.tensor(src)
        if x.q is not None:
            if x.q == qp:
                self.tensors[n.output[0]] = x
                return
            out = self.new(x.channels, qp, x.layout)
            ratio = float(np.float32(x.q.scale) / np.float32(qp.scale))
            self.emit(ops.RequantizeStep([x.tid], out.tid, ratio=ratio, zi=x.q.zp, zo=qp.zp,
                                         lo=qp.qmin, hi=qp.qmax))
        else:
            out = self.new(x.channels, qp, x.layout)
            self.emit(ops.QuantizeStep([x.tid], out.tid, qp=qp))
        self.tensors[n.output[0]] = out

    def op_DequantizeLinear(self, n: Any) -> None:
        q = self.const(n.input[0])
        if q is not None:  # a quantised constant (weights, bias)
            scale = self.const(n.input[1])
            zp = self.const(n.input[2]) if len(n.input) > 2 else np.zeros_like(scale, q.dtype)
            if scale is None or zp is None:
                raise self.fail("quantisation parameters must be constants")
            axis = int(self.attr("axis", 1))
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            s, z = scale.reshape(shape), zp.reshape(shape).astype(np.int64)
            self.consts[n.output[0]] = ((q.astype(np.int64) - z) * s).astype(np.float32)
            self.qconsts[n.output[0]] = (q, scale.astype(np.float32), zp, axis)
            return
        x = self.tensor(n.input[0])
        if x.q is None:
            raise self.fail("DequantizeLinear of a tensor that is not quantised")
        self.tensors[n.output[0]] = x  # a quantised tensor is its own dequantised view

    def _weight(self, name: str, axis: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(int weights, per-channel scales along ``axis``) of a DQ'd constant, if any."""
        qc = self.qconsts.get(name)
        if qc is None:
            return None, None
        q, scale, zp, _ = qc
        if np.any(zp != 0) or q.dtype != np.int8:
            return None, None  # only symmetric int8 weights run in int8
        return q, scale.reshape(-1)

    def op_Conv(self, n: Any) -> None:
        w = self.const(n.input[1])
        if w is None or w.ndim != 3:
            raise self.fail("weights must be a constant [Cout, Cin/g, K] (1-D conv)")
        if any(d != 1 for d in self.attr("dilations", [1])):
            raise self.fail("dilation != 1")
        if self.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.fail("auto_pad is not supported (use explicit pads)")
        x = self.tensor(n.input[0])
        if x.layout != "NCT":
            raise self.fail("conv input must be [N, C, T]")
        b = self.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if len(n.input) > 2 and n.input[2] and b is None:
            raise self.fail("bias must be a constant")
        pads = list(self.attr("pads", [0, 0]))
        stride = list(self.attr("strides", [1]))[0]
        wq, ws = self._weight(n.input[1], 0)
        bias = b.astype(np.float32) if b is not None else np.zeros(w.shape[0], np.float32)
        self.pending[n.output[0]] = _PConv(x, w.astype(np.float32), bias,
                                           int(self.attr("group", 1)), int(stride),
                                           int(pads[0]), int(pads[1]), wq, ws, "NCT")

    def op_MatMul(self, n: Any) -> None:
        w = self.const(n.input[1])
        if w is None or w.ndim != 2:
            raise self.fail("only x @ constant [Cin, Cout] projections are supported")
        x = self.tensor(n.input[0])
        if x.layout != "NTC":
            raise self.fail("MatMul input must be [N, T, C]")
        wq, ws = self._weight(n.input[1], 1)
        self.pending[n.output[0]] = _PConv(
            x, np.ascontiguousarray(w.T[:, :, None], dtype=np.float32),
            np.zeros(w.shape[1], np.float32), 1, 1, 0, 0,
            None if wq is None else np.ascontiguousarray(wq.T[:, :, None]), ws, "NTC")

    def op_BatchNormalization(self, n: Any) -> None:
        vals = [self.const(i) for i in n.input[1:5]]
        if any(v is None for v in vals):
            raise self.fail("BatchNormalization parameters must be constants")
        gamma, beta, mean, var = (v.astype(np.float64) for v in vals)  # type: ignore[union-attr]
        a = gamma / np.sqrt(var + float(self.attr("epsilon", 1e-5)))
        shift = beta - mean * a
        p = self.sole(n.input[0])
        if isinstance(p, _PConv) and p.act == ops.ACT_NONE and p.res is None:
            p.w = (p.w * a[:, None, None]).astype(np.float32)
            p.b = (p.b * a + shift).astype(np.float32)
            p.wq = None  # folded weights are float: int8 only for QDQ-quantised weights
            self.rename(n.input[0], n.output[0])
            return
        x = self.as_float(self.tensor(n.input[0]))
        out = self.new(x.channels, None, x.layout)
        self.emit(ops.EltwiseStep([x.tid], out.tid, op="affine", a=a.astype(np.float32),
                                  b=shift.astype(np.float32)))
        self.tensors[n.output[0]] = out

    def _activation(self, n: Any, act: int, lo: float = 0.0, hi: float = 0.0) -> None:
        p = self.sole(n.input[0])
        if p is not None and p.act == ops.ACT_NONE and not (
                act == ops.ACT_SILU and isinstance(p, _PConv) and p.quantizable):
            p.act, p.lo, p.hi = act, lo, hi
            self.rename(n.input[0], n.output[0])
            return
        x = self.as_float(self.tensor(n.input[0]))
        out = self.new(x.channels, None, x.layout)
        self.emit(ops.EltwiseStep([x.tid], out.tid, op="act", act=act, lo=lo, hi=hi))
        self.tensors[n.output[0]] = out

    def op_Relu(self, n: Any) -> None:
        self._activation(n, ops.ACT_RELU)

    def op_SiLU(self, n: Any) -> None:
        self._activation(n, ops.ACT_SILU)

    def op_Clip(self, n: Any) -> None:
        lo = self.const(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        hi = self.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if (len(n.input) > 1 and n.input[1] and lo is None) or (
                len(n.input) > 2 and n.input[2] and hi is None):
            raise self.fail("Clip bounds must be constants")
        lo_v = float(lo) if lo is not None else float(self.attr("min", -3.4e38))
        hi_v = float(hi) if hi is not None else float(self.attr("max", 3.4e38))
        if lo_v == 0.0 and hi_v >= 3.4e38:
            self._activation(n, ops.ACT_RELU)
        else:
            self._activation(n, ops.ACT_CLIP, lo_v, hi_v)

    def op_Sigmoid(self, n: Any) -> None:
        x = self.as_float(self.tensor(n.input[0]))
        out = self.new(x.channels, None, x.layout)
        self.emit(ops.EltwiseStep([x.tid], out.tid, op="sigmoid"))
        self.tensors[n.output[0]] = out

    def op_Mul(self, n: Any) -> None:
        if any(self.const(i) is not None for i in n.input):
            raise self.fail("Mul by a constant is not supported")
        a, b = (self.as_float(self.tensor(i)) for i in n.input)
        if a.channels != b.channels:
            raise self.fail("Mul of tensors with different channel counts")
        out = self.new(a.channels, None, a.layout)
        self.emit(ops.EltwiseStep([a.tid, b.tid], out.tid, op="mul"))
        self.tensors[n.output[0]] = out

    def op_Add(self, n: Any) -> None:
        ca, cb = (self.const(i) for i in n.input)
        if ca is not None or cb is not None:  # bias add after a projection
            name, c = (n.input[1], ca) if ca is not None else (n.input[0], cb)
            c = np.asarray(c, np.float32).reshape(-1)
            p = self.sole(name)
            if isinstance(p, _PConv) and p.act == ops.ACT_NONE and p.res is None:
                p.b = (p.b + c).astype(np.float32)  # bias of a projection
                self.rename(name, n.output[0])
                return
            x = self.as_float(self.tensor(name))
            if c.size not in (1, x.channels):
                raise self.fail("Add of a constant must broadcast over channels")
            out = self.new(x.channels, None, x.layout)
            self.emit(ops.EltwiseStep([x.tid], out.tid, op="affine",
                                      a=np.ones(x.channels, np.float32),
                                      b=np.broadcast_to(c, (x.channels,)).copy()))
            self.tensors[n.output[0]] = out
            return
        for i, j in ((0, 1), (1, 0)):
            p = self.sole(n.input[i])
            if isinstance(p, _PConv) and not p.quantizable and p.act == ops.ACT_NONE \
                    and p.res is None:
                p.res = self.tensor(n.input[j])
                self.rename(n.input[i], n.output[0])
                return
        a, b = self.tensor(n.input[0]), self.tensor(n.input[1])
        self.pending[n.output[0]] = _PAdd(a, b)

    def op_Concat(self, n: Any) -> None:
        xs = [self.as_float(self.tensor(i)) for i in n.input]
        axis = int(self.attr("axis", 1))
        layout = xs[0].layout
        if any(x.layout != layout for x in xs) or not (
                (layout == "NCT" and axis in (1, -2)) or (layout == "NTC" and axis in (2, -1))):
            raise self.fail("only channel concatenation is supported")
        out = self.new(sum(x.channels for x in xs), None, layout)
        self.emit(ops.ConcatStep([x.tid for x in xs], out.tid))
        self.tensors[n.output[0]] = out

    def op_Transpose(self, n: Any) -> None:
        perm = list(self.attr("perm", [0, 2, 1]))
        if perm != [0, 2, 1]:
            raise self.fail(f"only perm [0, 2, 1] is supported, got {perm}")
        x = self.tensor(n.input[0])
        flipped = "NTC" if x.layout == "NCT" else "NCT"
        self.tensors[n.output[0]] = Tensor(x.tid, x.channels, x.q, flipped)

    def _softmax(self, n: Any, log: bool) -> None:
        x = self.as_float(self.tensor(n.input[0]))
        axis = int(self.attr("axis", -1))
        if not ((x.layout == "NTC" and axis in (-1, 2)) or (x.layout == "NCT" and axis in (1, -2))):
            raise self.fail("softmax must be over the class axis")
        out = self.new(x.channels, None, x.layout)
        self.emit(ops.SoftmaxStep([x.tid], out.tid, log=log))
        self.tensors[n.output[0]] = out

    def op_LogSoftmax(self, n: Any) -> None:
        self._softmax(n, True)

    def op_Softmax(self, n: Any) -> None:
        self._softmax(n, False)


def _conv_layout(w: np.ndarray, group: int, mode: str) -> np.ndarray:
    """ONNX [Cout, Cin/g, K] -> kernel layout (depthwise [K, C]; generic [G, K, cig, cog])."""
    cout, cig, k = w.shape
    if mode == "depthwise":
        return np.ascontiguousarray(w[:, 0, :].T)
    cog = cout // group
    return np.ascontiguousarray(w.reshape(group, cog, cig, k).transpose(0, 3, 2, 1))
