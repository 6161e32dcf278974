"""Tests for edgecall.signal: normalisation, resampling, chunk/stitch round trips."""

from __future__ import annotations

import numpy as np
import pytest

from edgecall import signal
from edgecall.signal import Normalisation


def test_median_mad_is_scale_and_shift_free() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(90, 12, 5000).astype(np.float32)
    a = signal.normalise(x, Normalisation("median_mad"))
    b = signal.normalise(x * 3.5 + 40, Normalisation("median_mad"))
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert abs(float(np.median(a))) < 1e-5
    assert np.median(np.abs(a)) * 1.4826 == pytest.approx(1.0, rel=1e-3)


def test_fixed_and_clip() -> None:
    x = np.array([0.0, 50.0, 100.0, 1000.0], dtype=np.float32)
    out = signal.normalise(x, Normalisation("fixed", shift=50, scale=25, clip=3))
    np.testing.assert_allclose(out, [-2.0, 0.0, 2.0, 3.0])


def test_constant_signal_does_not_divide_by_zero() -> None:
    out = signal.normalise(np.full(100, 7.0, np.float32), Normalisation("median_mad"))
    assert np.all(out == 0)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown normalisation"):
        signal.normalise(np.zeros(3), Normalisation("zscore"))


def test_resample_length_and_shape() -> None:
    t = np.arange(5000) / 5000.0
    x = np.sin(2 * np.pi * 3 * t).astype(np.float32)
    y = signal.resample(x, 5000, 4000)
    assert y.shape == (4000,)
    np.testing.assert_allclose(y, np.sin(2 * np.pi * 3 * np.arange(4000) / 4000.0), atol=1e-3)
    assert signal.resample(x, 4000, 4000) is x


@pytest.mark.parametrize("n", [1, 399, 400, 401, 997, 4001, 12345])
def test_chunks_cover_the_read(n: int) -> None:
    starts = signal.chunk_starts(n, 400, 80, 4)
    assert starts[0] == 0 and all(s % 4 == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))
    if n > 400:
        assert starts[-1] + 400 <= n and n - (starts[-1] + 400) < 4
        assert all(b - a <= 400 - 80 for a, b in zip(starts, starts[1:], strict=False))
    chunks = list(signal.chunk_read("r", np.arange(n, dtype=np.float32), 400, 80, 4))
    assert len(chunks) == len(starts)
    assert all(c.signal.shape == (400,) for c in chunks)
    assert chunks[0].length == min(n, 400)


def test_bad_chunk_geometry() -> None:
    with pytest.raises(ValueError):
        signal.chunk_starts(1000, 100, 100)
    with pytest.raises(ValueError, match="multiples of the stride"):
        signal.chunk_starts(1000, 402, 80, 4)


def _conv_net(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """A toy 'network': strided convolution with zero padding, [F, C] output."""
    k = w.shape[1]
    xp = np.pad(x, (k // 2, k // 2))
    frames = np.stack([xp[i:i + k] for i in range(0, x.shape[0], stride)])
    return frames[: x.shape[0] // stride] @ w.T


@pytest.mark.parametrize("n", [3000, 3004, 5123, 20011])
def test_stitch_matches_unchunked_output_away_from_edges(n: int) -> None:
    rng = np.random.default_rng(n)
    stride, chunk, overlap, k = 4, 800, 160, 9  # receptive field << overlap / 2
    w = rng.normal(size=(5, k)).astype(np.float32)
    x = rng.normal(size=n).astype(np.float32)
    starts = signal.chunk_starts(n, chunk, overlap, stride)
    posts = [_conv_net(c.signal, w, stride)
             for c in signal.chunk_read("r", x, chunk, overlap, stride)]
    stitched = signal.stitch(posts, starts, n, chunk, stride)
    full = _conv_net(x, w, stride)
    assert stitched.shape[0] == signal.num_frames(n, chunk, stride)
    edge = k // (2 * stride) + 1  # frames whose receptive field leaves the read
    np.testing.assert_allclose(stitched[:-edge], full[: stitched.shape[0] - edge], atol=1e-5)


def test_stitch_needs_one_output_per_chunk() -> None:
    with pytest.raises(ValueError):
        signal.stitch([np.zeros((10, 5))], [0, 100], 1000, 400, 4)
