"""Teachers: networks whose posteriors and basecalls label training data.

The only teacher bundled today is deepnano-blitz (R9.4/R9.4.1 DNA, 4 kHz, MIT;
weights read from ``shared/data/r9.4.1/teacher/deepnano-blitz/rnn*.txt``, never
copied into the project). Its text format, forward pass, chunking and beam
search are described in that folder's FORMAT.md and re-implemented here:

* :class:`DeepnanoNet` - the PyTorch module (conv k33 on [x, x^2] -> max-pool 3
  -> tanh -> 4 GRU layers alternating forward/backward -> linear -> softmax),
  with ``approx=True`` reproducing the Rust bit-cast exponential.
* :func:`call_spans` - the old (pre-2021) and current chunking of a read.
* :func:`beam_search` - the backwards prefix beam search (beam 5, cut 0.1).

Other teachers (a bonito or dorado model directory) plug in by implementing
the :class:`Teacher` protocol: ``posteriors(signal_norm) -> [F, 5]`` log-probs
over ``alphabet`` at ``stride`` samples per frame and ``sample_rate`` Hz.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

ALPHABET = "NACGT"
STEP = 500
PAD = 10
CHUNK = 3 * STEP + 6 * PAD  # 1560 samples -> 520 frames
CLIP = 2.5


def shared_data() -> Path:
    """The shared data folder (``EDGECALL_SHARED_DATA`` or ``../shared/data``)."""
    import os

    env = os.environ.get("EDGECALL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_weights(width: int = 96) -> Path:
    """Path of the deepnano-blitz ``rnn<width>.txt`` weights in shared data."""
    return shared_data() / "r9.4.1" / "teacher" / "deepnano-blitz" / f"rnn{width}.txt"


class Teacher(Protocol):
    """What a teacher offers the data builder."""

    stride: int
    sample_rate: int
    alphabet: str

    def posteriors(self, signal_norm: np.ndarray) -> np.ndarray:
        """Log-posteriors ``[F, len(alphabet)]`` float32 for one normalised read."""
        ...


# --------------------------------------------------------------------------- weights

def load_tensors(path: Path) -> list[np.ndarray]:
    """Read a deepnano-blitz weight file: pairs of (shape line, values line)."""
    lines = Path(path).read_text().split("\n")
    out: list[np.ndarray] = []
    i = 0
    while i + 1 < len(lines) and lines[i].strip():
        shape = tuple(int(v) for v in lines[i].split())
        vals = np.array(lines[i + 1].split(), dtype=np.float32)
        if vals.size != int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {len(out) + 1} has {vals.size} values, "
                             f"shape {shape}")
        out.append(vals.reshape(shape))
        i += 2
    if len(out) != 52:
        raise ValueError(f"{path}: expected 52 tensors, found {len(out)}")
    return out


# --------------------------------------------------------------------------- network

_C1 = np.float32(12102203.15410432)
_C2 = np.float32(1064872507.1541044)


def approx_exp(p: torch.Tensor) -> torch.Tensor:
    """Schraudolph exponential as in deepnano-blitz ``approx.rs`` (float32 bit-cast)."""
    v = p.float() * float(_C1) + float(_C2)
    v = torch.clamp(v, 0.0, 2139095039.0)  # u32 saturation; cap below inf/NaN bits
    return v.to(torch.int64).to(torch.int32).view(torch.float32)


def approx_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-x))`` on the approximate exponential."""
    return 1.0 / (1.0 + approx_exp(-x))


def approx_tanh(x: torch.Tensor) -> torch.Tensor:
    """``2 / (1 + exp(-2x)) - 1`` on the approximate exponential."""
    return -1.0 + 2.0 / (1.0 + approx_exp(-2.0 * x))


class DeepnanoNet(nn.Module):
    """deepnano-blitz network: normalised signal ``[N, 1, T]`` -> probs ``[N, T/3, 5]``.

    Parameters
    ----------
    tensors
        The 52 tensors from :func:`load_tensors`.
    approx
        Use the Rust fast approximate tanh/sigmoid (slow python loop over time);
        otherwise exact activations through ``nn.GRU``.
    """

    def __init__(self, tensors: list[np.ndarray], approx: bool = False) -> None:
        super().__init__()
        wc, bc = tensors[0], tensors[1]
        h = int(bc.shape[0])
        self.hidden = h
        self.approx = approx
        self.conv = nn.Conv1d(2, h, 33, padding=16, bias=False)
        # row 2j+f of Wc multiplies feature f of sample t-16+j
        w = wc.reshape(33, 2, h).transpose(2, 1, 0)  # [h, f, j]
        self.conv.weight.data = torch.from_numpy(np.ascontiguousarray(w))
        self.conv_bias = nn.Parameter(torch.from_numpy(bc.copy()))
        self.grus = nn.ModuleList()
        for layer in range(4):
            t = tensors[2 + 12 * layer: 14 + 12 * layer]
            w_in_n, w_h_n, b_in_n, b_h_n, w_in_r, w_in_z, w_h_r, w_h_z = t[:8]
            b_in_r, b_h_r, b_in_z, b_h_z = t[8:]
            gru = nn.GRU(h, h, batch_first=True)
            gru.weight_ih_l0.data = torch.from_numpy(
                np.concatenate([w_in_r.T, w_in_z.T, w_in_n.T]).copy())
            gru.weight_hh_l0.data = torch.from_numpy(
                np.concatenate([w_h_r.T, w_h_z.T, w_h_n.T]).copy())
            gru.bias_ih_l0.data = torch.from_numpy(np.concatenate([b_in_r, b_in_z, b_in_n]))
            gru.bias_hh_l0.data = torch.from_numpy(np.concatenate([b_h_r, b_h_z, b_h_n]))
            self.grus.append(gru)
        self.out = nn.Linear(h, 5)
        self.out.weight.data = torch.from_numpy(tensors[50].T.copy())
        self.out.bias.data = torch.from_numpy(tensors[51].copy())

    def _gru_approx(self, gru: nn.GRU, x: torch.Tensor) -> torch.Tensor:
        """One GRU layer with approximate activations, forward in time, [N, F, H]."""
        h = self.hidden
        xp = x @ gru.weight_ih_l0.T + gru.bias_ih_l0  # [N, F, 3H]
        w_hh = gru.weight_hh_l0.T
        b_hh = gru.bias_hh_l0
        state = torch.zeros(x.shape[0], h)
        outs = []
        for t in range(x.shape[1]):
            hp = state @ w_hh + b_hh
            r = approx_sigmoid(xp[:, t, :h] + hp[:, :h])
            z = approx_sigmoid(xp[:, t, h:2 * h] + hp[:, h:2 * h])
            n = approx_tanh(xp[:, t, 2 * h:] + r * hp[:, 2 * h:])
            state = z * state + (1.0 - z) * n
            outs.append(state)
        return torch.stack(outs, dim=1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``[N, T/3, 5]`` float32."""
        x = torch.clamp(x, -CLIP, CLIP)
        feats = torch.cat([x, x * x], dim=1)  # [N, 2, T]
        c = nn.functional.max_pool1d(self.conv(feats), 3, 3)
        c = c + self.conv_bias[None, :, None]
        c = approx_tanh(c) if self.approx else torch.tanh(c)
        hseq = c.transpose(1, 2)  # [N, F, H]
        for i, gru in enumerate(self.grus):
            if i % 2:
                hseq = hseq.flip(1)
            hseq = self._gru_approx(gru, hseq) if self.approx else gru(hseq)[0]
            if i % 2:
                hseq = hseq.flip(1)
        e = torch.exp(self.out(hseq))
        return e / e.sum(-1, keepdim=True)


# --------------------------------------------------------------------------- chunking

def call_spans(n: int, legacy: bool = False) -> list[tuple[int, int, int]]:
    """Chunks of a read as ``(start_sample, keep_from_frame, keep_to_frame)``.

    ``legacy`` is the pre-2021 chunking (no final tail chunk). Reads shorter
    than one chunk (1,560 samples) yield no spans.
    """
    spans: list[tuple[int, int, int]] = []
    if n < CHUNK:
        return spans
    start = 0
    while start + CHUNK < n:
        spans.append((start, 0 if start == 0 else PAD, CHUNK // 3 - PAD))
        start += 3 * STEP
    if not legacy:
        last = n - CHUNK
        keep = (start - last) // 3 + PAD if spans else 0
        spans.append((last, keep, CHUNK // 3))
    return spans


# --------------------------------------------------------------------------- decoding

def beam_search(probs: np.ndarray, beam_size: int = 5,
                threshold: float = 0.1) -> tuple[str, str]:
    """deepnano-blitz prefix beam search over ``[F, 5]`` probabilities (walks backwards).

    Returns the sequence and its Phred+33 quality string.
    """
    prevs: list[tuple[int, int]] = [(0, 0)]
    max_p: list[float] = [0.0]
    fwd: list[list[int]] = [[-1, -1, -1, -1]]
    cur: list[tuple[int, float, float]] = [(0, 0.0, 1.0)]
    pr_all = np.asarray(probs, dtype=np.float32)[::-1].tolist()
    for pr in pr_all:
        new: list[tuple[int, float, float]] = []
        for beam, base_p, n_p in cur:
            if pr[0] > threshold:
                new.append((beam, 0.0, (n_p + base_p) * pr[0]))
            for b in range(1, 5):
                if pr[b] < threshold:
                    continue
                if b == prevs[beam][0]:
                    new.append((beam, base_p * pr[b], 0.0))
                    max_p[beam] = max(max_p[beam], pr[b])
                    mass = n_p * pr[b]
                else:
                    mass = (base_p + n_p) * pr[b]
                nb = fwd[beam][b - 1]
                if nb == -1:
                    nb = len(prevs)
                    prevs.append((b, beam))
                    max_p.append(pr[b])
                    fwd[beam][b - 1] = nb
                    fwd.append([-1, -1, -1, -1])
                new.append((nb, mass, 0.0))
                max_p[nb] = max(max_p[nb], pr[b])
        new.sort(key=lambda x: x[0])
        merged: list[list] = []
        for key, a, c in new:
            if merged and merged[-1][0] == key:
                merged[-1][1] += a
                merged[-1][2] += c
            else:
                merged.append([key, a, c])
        merged.sort(key=lambda x: -(x[1] + x[2]))
        merged = merged[:beam_size]
        top = merged[0][1] + merged[0][2]
        cur = [(k, a / top, c / top) for k, a, c in merged]
    seq: list[str] = []
    qual: list[str] = []
    beam = cur[0][0]
    while beam != 0:
        seq.append(ALPHABET[prevs[beam][0]])
        q = int(-math.log10(max(1.0 - max_p[beam], 1e-30)) * 10.0) + 33
        qual.append(chr(q))
        beam = prevs[beam][1]
    return "".join(seq), "".join(qual)


def normalise_raw(raw: np.ndarray) -> np.ndarray:
    """deepnano-blitz normalisation: median / (1.4826 MAD) over the read, float32."""
    x = np.asarray(raw, dtype=np.float32)
    med = np.median(x)
    mad = np.median(np.abs(x - med)) * np.float32(1.4826)
    return ((x - med) / (mad if mad > 0 else np.float32(1.0))).astype(np.float32)


# --------------------------------------------------------------------------- teacher

@dataclass
class DeepnanoTeacher:
    """The deepnano-blitz teacher behind the :class:`Teacher` interface.

    Parameters
    ----------
    weights
        ``rnn<H>.txt`` path.
    approx
        Rust-approximate activations (exact oracle configuration) instead of exact.
    legacy_chunking
        Pre-2021 chunking without the final tail chunk.
    batch_size
        Chunks per forward pass.
    """

    weights: Path
    approx: bool = False
    legacy_chunking: bool = False
    batch_size: int = 64
    stride: int = 3
    sample_rate: int = 4000
    alphabet: str = ALPHABET

    def __post_init__(self) -> None:
        self.net = DeepnanoNet(load_tensors(self.weights), approx=self.approx).eval()

    def probs(self, signal_norm: np.ndarray) -> np.ndarray:
        """Stitched softmax probabilities ``[F, 5]`` for one normalised read."""
        x = np.asarray(signal_norm, dtype=np.float32)
        spans = call_spans(int(x.shape[0]), self.legacy_chunking)
        if not spans:
            return np.zeros((0, 5), np.float32)
        pieces: list[np.ndarray] = []
        for i in range(0, len(spans), self.batch_size):
            part = spans[i:i + self.batch_size]
            batch = np.stack([x[s:s + CHUNK] for s, _, _ in part])[:, None, :]
            out = self.net(torch.from_numpy(batch)).numpy()
            pieces.extend(out[j, a:b] for j, (_, a, b) in enumerate(part))
        return np.concatenate(pieces).astype(np.float32)

    def posteriors(self, signal_norm: np.ndarray) -> np.ndarray:
        """Log-posteriors ``[F, 5]`` (blank, A, C, G, T)."""
        return np.log(np.maximum(self.probs(signal_norm), 1e-30)).astype(np.float32)

    def basecall(self, signal_norm: np.ndarray, beam_size: int = 5) -> tuple[str, str]:
        """Sequence and quality; ``beam_size`` 0 or 1 means greedy."""
        p = self.probs(signal_norm)
        if beam_size <= 1:
            best = p.argmax(1)
            keep = (best != 0) & np.concatenate(([True], best[1:] != best[:-1]))
            seq = "".join(ALPHABET[b] for b in best[keep])
            return seq, "!" * len(seq)
        return beam_search(p, beam_size)


def export_onnx(weights: Path, path: Path) -> Path:
    """Write the exact-activation network as ONNX (``signal`` [N,1,T] -> ``probs``).

    Used to measure the teacher's onnxruntime samples/s beside the students';
    the file stays outside the project (third-party weights).
    """
    net = DeepnanoNet(load_tensors(weights)).eval()
    x = torch.randn(2, 1, CHUNK)
    torch.onnx.export(net, (x,), str(path), input_names=["signal"], output_names=["probs"],
                      opset_version=17, dynamo=False,
                      dynamic_axes={"signal": {0: "N", 2: "T"}, "probs": {0: "N", 1: "F"}})
    return path


# --------------------------------------------------------------------------- CLI

def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``teacher`` subcommand."""
    p = sub.add_parser("teacher", help="basecall pod5 files with the deepnano-blitz teacher")
    p.add_argument("pod5", type=Path, nargs="+")
    p.add_argument("--weights", type=Path, default=None, help="rnn*.txt (default rnn96)")
    p.add_argument("--approx", action="store_true", help="Rust approximate activations")
    p.add_argument("--legacy-chunking", action="store_true", help="pre-2021 chunking")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-reads", type=int, default=None)
    p.add_argument("--reference", type=Path, default=None,
                   help="FASTA: also report mappy identity (JSON on stdout)")
    p.add_argument("--output", "-o", type=Path, default=None, help="FASTQ output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Basecall with the teacher; optionally measure identity against a reference."""
    import pod5

    torch.set_num_threads(2)
    teacher = DeepnanoTeacher(args.weights or default_weights(96), approx=args.approx,
                              legacy_chunking=args.legacy_chunking)
    records: list[tuple[str, str, str]] = []
    for path in args.pod5:
        with pod5.Reader(path) as reader:
            for rec in reader.reads():
                if args.max_reads is not None and len(records) >= args.max_reads:
                    break
                seq, qual = teacher.basecall(normalise_raw(rec.signal), args.beam)
                records.append((str(rec.read_id), seq, qual))
    if args.output:
        with open(args.output, "w") as fh:
            for rid, seq, qual in records:
                fh.write(f"@{rid}\n{seq}\n+\n{qual}\n")
    if args.reference:
        from tools.evaluate import identities, summarise

        ids = identities({rid: seq for rid, seq, _ in records}, args.reference)
        print(json.dumps(summarise(ids), indent=1))
    return 0
