"""Signal stage: normalise, resample, chunk and stitch.

The model card decides the normalisation: ``median_mad`` standardises each
read by its median and 1.4826 x MAD (scale-free, so raw DAC or pA give the same
result); ``fixed`` applies the card's pA ``shift``/``scale``. Either way the
result may be clipped to ``[-clip, clip]``.

Chunks overlap by ``overlap`` samples; :func:`stitch` drops ``overlap / 2``
frames from each inner side and concatenates, so a stitched read equals the
unchunked network output away from the chunk edges.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgecall.types import Chunk, Read

MAD_TO_SD = 1.4826


@dataclass(frozen=True, slots=True)
class Normalisation:
    """How a model wants its input standardised (from the card)."""

    method: str = "median_mad"  # or "fixed"
    shift: float = 0.0  # pA, fixed only
    scale: float = 1.0  # pA, fixed only
    clip: float = 0.0  # 0 = no clipping


def norm_params(signal_pa: np.ndarray, norm: Normalisation) -> tuple[float, float]:
    """The pA ``(shift, scale)`` that :func:`normalise` uses: ``x = (pA - shift) / scale``.

    These are what a SAM record's ``sm``/``sd`` tags carry.
    """
    if norm.method == "median_mad":
        x = np.asarray(signal_pa, dtype=np.float32)
        med = np.median(x)
        mad = np.median(np.abs(x - med)) * MAD_TO_SD
        if not np.isfinite(mad) or mad <= 0:
            mad = np.float32(1.0)
        return float(med), float(mad)
    if norm.method == "fixed":
        return float(norm.shift), float(norm.scale)
    raise ValueError(f"unknown normalisation method {norm.method!r}")


def normalise(signal_pa: np.ndarray, norm: Normalisation,
              params: tuple[float, float] | None = None) -> np.ndarray:
    """Standardise one read's pA signal as the model expects (float32).

    ``params`` are :func:`norm_params` when already computed.
    """
    x = np.asarray(signal_pa, dtype=np.float32)
    shift, scale = params if params is not None else norm_params(x, norm)
    out = (x - np.float32(shift)) / np.float32(scale)
    if norm.clip > 0:
        np.clip(out, -norm.clip, norm.clip, out=out)
    return out.astype(np.float32, copy=False)


def resample(signal: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Linearly resample a 1-D signal between sample rates (no-op if equal)."""
    if from_rate == to_rate or signal.size == 0:
        return signal
    n_out = max(1, int(round(signal.size * to_rate / from_rate)))
    pos = np.arange(n_out, dtype=np.float64) * (from_rate / to_rate)
    return np.interp(pos, np.arange(signal.size), signal).astype(np.float32)


def chunk_starts(n: int, chunk_size: int, overlap: int, stride: int = 1) -> list[int]:
    """Start offsets of chunks covering ``n`` samples.

    Starts are multiples of ``stride``; the last chunk ends within ``stride - 1``
    samples of the read's end. A read no longer than one chunk gets one chunk
    at 0 (zero-padded by :func:`chunk_read`).
    """
    if chunk_size <= overlap:
        raise ValueError("chunk size must be larger than the overlap")
    if chunk_size % stride or overlap % stride:
        raise ValueError(f"chunk size and overlap must be multiples of the stride {stride}")
    if n <= chunk_size:
        return [0]
    step = chunk_size - overlap
    last = ((n - chunk_size) // stride) * stride
    starts = list(range(0, last, step))
    starts.append(last)
    return starts


def num_frames(n: int, chunk_size: int, stride: int) -> int:
    """Output frames a read of ``n`` samples yields after chunking and stitching."""
    if n <= chunk_size:
        return -(-n // stride)
    return n // stride


def chunk_read(read_id: str, x: np.ndarray, chunk_size: int, overlap: int,
               stride: int = 1) -> Iterator[Chunk]:
    """Split a normalised signal into overlapping fixed-size chunks.

    Reads shorter than one chunk are zero-padded at the end; ``Chunk.length``
    says how many samples are real.
    """
    n = int(x.shape[0])
    starts = chunk_starts(n, chunk_size, overlap, stride)
    total = len(starts)
    for i, s in enumerate(starts):
        piece = x[s:s + chunk_size]
        length = int(piece.shape[0])
        if length < chunk_size:
            piece = np.pad(piece, (0, chunk_size - length))
        yield Chunk(read_id, i, total, s, length,
                    np.ascontiguousarray(piece, dtype=np.float32))


def stitch(posts: list[np.ndarray], starts: list[int], n: int, chunk_size: int,
           stride: int) -> np.ndarray:
    """Join per-chunk outputs ``[chunk_size / stride, C]`` into one ``[F, C]`` array.

    ``F = num_frames(n, chunk_size, stride)``. Each boundary between consecutive
    chunks sits in the middle of their overlap: frames before it come from the
    earlier chunk, frames after it from the later one.
    """
    if len(posts) != len(starts):
        raise ValueError("one output per chunk start is required")
    n_frames = num_frames(n, chunk_size, stride)
    if len(posts) == 1:
        return posts[0][:n_frames]
    out = np.empty((n_frames, posts[0].shape[1]), dtype=posts[0].dtype)
    pos = 0
    for i, (post, s) in enumerate(zip(posts, starts, strict=True)):
        if i + 1 < len(starts):
            end = min(n_frames, (starts[i + 1] + s + chunk_size) // (2 * stride))
        else:
            end = n_frames
        if end <= pos:
            continue
        first = pos - s // stride
        out[pos:end] = post[first:first + end - pos]
        pos = end
    return out[:pos]


def prepare(read: Read, norm: Normalisation, model_rate: int) -> np.ndarray:
    """pA calibration, resampling to the model's rate, then normalisation."""
    return prepare_scaled(read, norm, model_rate)[0]


def prepare_scaled(read: Read, norm: Normalisation, model_rate: int
                   ) -> tuple[np.ndarray, float, float]:
    """Like :func:`prepare`, also returning the pA ``(shift, scale)`` it used."""
    pa = resample(read.signal_pa(), read.sample_rate, model_rate)
    shift, scale = norm_params(pa, norm)
    return normalise(pa, norm, (shift, scale)), shift, scale
