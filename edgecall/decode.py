"""CTC decoding: posteriors -> sequence, per-base qualities and move table.

The public functions validate their input and dispatch to a backend chosen in
one place (:mod:`edgecall.kernels_backend`): the compiled Cython kernels when
built, or the numpy reference implementations in this module when
``EDGECALL_PURE_PYTHON=1`` or no compiled kernels exist. Both have the same
signatures and are tested against each other.

Conventions: ``logp`` is ``[F, C]`` float32 log-posteriors, class 0 the CTC
blank and classes ``1..C-1`` the bases of ``alphabet[1:]``. Per-base quality
is Phred of the base's best frame posterior, capped at 50; moves have one
entry per frame, 1 where a new base is emitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QMAX = 50


@dataclass(frozen=True, slots=True)
class Decoded:
    """Result of decoding one read's posteriors."""

    sequence: str
    quality: str  # Phred+33
    moves: np.ndarray  # uint8 [F]
    mean_qscore: float


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (float32)."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


def phred(p_correct: np.ndarray) -> np.ndarray:
    """Phred scores (int, 0..QMAX) from per-base probabilities of being right."""
    err = np.clip(1.0 - np.asarray(p_correct, dtype=np.float64), 10 ** (-QMAX / 10), 1.0)
    return np.clip(np.floor(-10.0 * np.log10(err)), 0, QMAX).astype(np.int32)


def mean_qscore(quals: np.ndarray) -> float:
    """Mean qscore the way dorado reports it: Phred of the mean error probability."""
    if quals.size == 0:
        return 0.0
    mean_err = float(np.mean(10.0 ** (-np.asarray(quals, dtype=np.float64) / 10.0)))
    return float(-10.0 * np.log10(max(mean_err, 1e-10)))


def greedy_ref(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference greedy CTC: (labels int32 [L], base prob float32 [L], moves uint8 [F]).

    A base is emitted at the first frame of each run of a non-blank label; its
    probability is the largest posterior of that label within the run.
    """
    f = logp.shape[0]
    moves = np.zeros(f, dtype=np.uint8)
    if f == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), moves
    best = np.argmax(logp, axis=1).astype(np.int32)
    prev = np.concatenate(([0], best[:-1]))
    start = (best != 0) & (best != prev)
    moves[start] = 1
    labels = best[start]
    probs = np.exp(logp[np.arange(f), best]).astype(np.float32)
    # run id per frame: index of the emitted base a frame belongs to (-1 before any)
    run = np.cumsum(start) - 1
    in_run = (best != 0) & (run >= 0)
    base_p = np.zeros(labels.shape[0], dtype=np.float32)
    np.maximum.at(base_p, run[in_run], probs[in_run])
    return labels, base_p, moves


def decode(logp: np.ndarray, alphabet: str = "NACGT", *, method: str = "greedy",
           beam_width: int = 5) -> Decoded:
    """Decode one read's ``[F, C]`` log-posteriors.

    Parameters
    ----------
    logp : ndarray
        Float32 log-posteriors, blank first.
    alphabet : str
        Class labels; ``alphabet[0]`` is the blank.
    method : {"greedy", "beam"}
        Decoder: best path, or CTC prefix beam search (a base's probability is
        then its label's best posterior from its frame to the next base's).
    beam_width : int
        Beams kept per frame for ``method="beam"``.

    Returns
    -------
    Decoded
        Sequence, Phred+33 qualities, moves and mean qscore.
    """
    logp = np.ascontiguousarray(logp, dtype=np.float32)
    if logp.ndim != 2 or logp.shape[1] != len(alphabet):
        raise ValueError(f"posteriors must be [F, {len(alphabet)}], got {logp.shape}")
    from edgecall.kernels_backend import kernels

    if method == "greedy":
        labels, probs, moves = kernels().greedy(logp)
    elif method == "beam":
        if beam_width < 1:
            raise ValueError(f"beam width must be >= 1, got {beam_width}")
        labels, probs, moves = kernels().beam_search(logp, int(beam_width))
    else:
        raise ValueError(f"unknown decoder {method!r} (greedy or beam)")
    table = np.frombuffer(alphabet.encode(), dtype=np.uint8)
    seq = table[labels].tobytes().decode() if len(labels) else ""
    q = phred(probs)
    qual = (q + 33).astype(np.uint8).tobytes().decode()
    return Decoded(seq, qual, moves, mean_qscore(q))
