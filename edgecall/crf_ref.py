"""Numpy reference CRF decoding kernels: same signatures as ``kernels/crf.pyx``.

Scores are the blank-expanded layout of imported dorado/bonito CRF models
(``[F, S*5]`` float32, ``S = 4**state_len``): viewed as ``[S, 5]``, row ``s`` is
the destination state (the last ``state_len`` bases as a base-4 number, A=0 C=1
G=2 T=3), column 0 the "stay" (no base, state unchanged) and column ``1+k`` the
move from predecessor ``k*4**(state_len-1) + s//4``, which emits base ``s % 4``.
Scores are unnormalised log-potentials; a path's score is the sum of its
transitions' scores and every state is a possible start and end.

These functions are slow (Python loops over frames or hypotheses) and exist to
be obviously right: :mod:`edgecall.kernels_backend` selects them with
``EDGECALL_PURE_PYTHON=1`` and the tests compare them with the compiled ones.
Arithmetic is float32 in the same order as the compiled kernels.
"""

from __future__ import annotations

import numpy as np

NEG = np.float32(-np.inf)


def predecessors(state_len: int) -> np.ndarray:
    """``[S, 4]`` int array: ``pred[s, k]``, the state that column ``1+k`` of ``s`` comes from."""
    n = 4 ** state_len
    s = np.arange(n)
    return (np.arange(4)[None, :] * (n // 4) + (s // 4)[:, None]).astype(np.int64)


def _lse5(x: np.ndarray) -> np.ndarray:
    """log-sum-exp over the last axis (float32, max-shifted; -inf rows stay -inf)."""
    m = x.max(axis=-1)
    safe = np.where(np.isfinite(m), m, np.float32(0))
    s = np.exp(x - safe[..., None]).sum(axis=-1, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return (safe + np.log(s)).astype(np.float32)


def _view(scores: np.ndarray, state_len: int) -> np.ndarray:
    """Scores as ``[F, S, 5]`` after checking the width."""
    n = 4 ** state_len
    if scores.ndim != 2 or scores.shape[1] != n * 5:
        raise ValueError(f"CRF scores must be [F, {n * 5}] for state_len {state_len}, "
                         f"got {scores.shape}")
    return scores.reshape(scores.shape[0], n, 5)


def crf_viterbi(scores: np.ndarray, state_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Best state path: ``(labels int32 [L] in 1..4, moves uint8 [F])``.

    Ties go to the stay, then to the lowest predecessor index, and the final
    state is the lowest-numbered best one. A move at frame ``t`` into state ``s``
    emits label ``s % 4 + 1`` and sets ``moves[t] = 1``.
    """
    sc = _view(scores, state_len)
    f, n = sc.shape[0], sc.shape[1]
    pred = predecessors(state_len)
    a = np.zeros(n, np.float32)
    back = np.empty((f, n), np.int8)
    rows = np.arange(n)
    for t in range(f):
        cand = np.concatenate([(a + sc[t, :, 0])[:, None], a[pred] + sc[t, :, 1:]], axis=1)
        back[t] = cand.argmax(1)
        a = cand[rows, back[t]]
    moves = np.zeros(f, np.uint8)
    labels: list[int] = []
    st = int(a.argmax()) if f else 0
    for t in range(f - 1, -1, -1):
        k = int(back[t, st])
        if k:
            moves[t] = 1
            labels.append(st % 4 + 1)
            st = int(pred[st, k - 1])
    return np.array(labels[::-1], np.int32), moves


def _normalise(v: np.ndarray) -> np.ndarray:
    """Subtract the maximum (a per-frame constant that cancels in posteriors)."""
    return (v - v.max()).astype(np.float32)


def crf_backward(scores: np.ndarray, state_len: int) -> np.ndarray:
    """Backward log-scores ``[F+1, S]``: row ``t`` sums every continuation after frame ``t-1``.

    Each row is shifted so its maximum is 0 (row ``F`` is all zeros).
    """
    sc = _view(scores, state_len)
    f, n = sc.shape[0], sc.shape[1]
    q = n // 4
    beta = np.zeros((f + 1, n), np.float32)
    for t in range(f - 1, -1, -1):
        nxt = beta[t + 1]
        # from state p: stay (p, col 0) or move to s = (4p + b) % S through column 1 + p // q
        p = np.arange(n)
        dest = (p[:, None] * 4 + np.arange(4)[None, :]) % n
        cols = 1 + p // q
        cand = np.concatenate([(sc[t, p, 0] + nxt[p])[:, None],
                               sc[t, dest, cols[:, None]] + nxt[dest]], axis=1)
        beta[t] = _normalise(_lse5(cand))
    return beta


def crf_forward_backward(scores: np.ndarray, state_len: int) -> np.ndarray:
    """Per-frame transition posteriors summed by what they emit: ``float32 [F, 5]``.

    Column 0 is the posterior probability that frame ``t`` is a stay, column
    ``1+b`` that frame ``t`` moves into a state ending in base ``b`` (summed over
    the k-mer contexts and predecessors). Rows sum to 1. Computed in log space
    with per-frame shifts, so long reads neither overflow nor lose precision.
    """
    sc = _view(scores, state_len)
    f, n = sc.shape[0], sc.shape[1]
    pred = predecessors(state_len)
    beta = crf_backward(scores, state_len)
    post = np.zeros((f, 5), np.float32)
    a = np.zeros(n, np.float32)
    base = np.arange(n) % 4
    for t in range(f):
        nxt = beta[t + 1]
        edges = np.concatenate([(a + sc[t, :, 0])[:, None], a[pred] + sc[t, :, 1:]], axis=1)
        e = edges + nxt[:, None]
        p = np.exp(e - e.max()).astype(np.float32)
        post[t, 0] = p[:, 0].sum(dtype=np.float32)
        moved = p[:, 1:].sum(axis=1, dtype=np.float32)
        for b in range(4):
            post[t, 1 + b] = moved[base == b].sum(dtype=np.float32)
        post[t] /= post[t].sum(dtype=np.float32)
        a = _normalise(_lse5(edges))
    return post


def _lse2(a: np.float32, b: np.float32) -> np.float32:
    """log(exp(a) + exp(b)) in float32 (handles -inf)."""
    if a == NEG:
        return b
    if b == NEG:
        return a
    if a > b:
        return np.float32(a + np.log1p(np.exp(np.float32(b - a))))
    return np.float32(b + np.log1p(np.exp(np.float32(a - b))))


class _Trie:
    """Prefix tree of emitted bases below one seed state per root; children are unique."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.label: list[int] = []
        self.state: list[int] = []
        self.child: list[list[int]] = []

    def add(self, parent: int, label: int, state: int) -> int:
        """Append a node and return its id (linked from its parent when it has one)."""
        self.parent.append(parent)
        self.label.append(label)
        self.state.append(state)
        self.child.append([-1, -1, -1, -1])
        node = len(self.parent) - 1
        if parent >= 0:
            self.child[parent][label - 1] = node
        return node

    def labels(self, node: int) -> np.ndarray:
        """Labels of the prefix ending at ``node``."""
        out = []
        while self.parent[node] >= 0:
            out.append(self.label[node])
            node = self.parent[node]
        return np.array(out[::-1], np.int32)


def crf_beam_search(scores: np.ndarray, state_len: int,
                    beam_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Beam search for the best base sequence: ``(labels int32 [L], moves uint8 [F])``.

    A hypothesis is a start state plus the bases emitted since (its current
    state follows from both). Its score sums over *all* state paths that give
    it, so a stay and a move that reach the same hypothesis are merged by
    log-sum-exp. With a wide enough beam the result maximises, over start
    states ``s0`` and sequences ``y``, ``log sum_{paths from s0 emitting y}
    exp(score)``; Viterbi maximises one path's score instead. Each frame keeps
    the ``beam_width`` candidates with the best forward score plus the backward
    score of their state (the look-ahead guide dorado also uses); ties go to
    the lower candidate index (hypothesis ``i``: stay ``5i``, base ``b`` ``5i+1+b``).
    Moves follow one path of the winner, traced back through the frames; where
    a stay and a move were merged it follows the higher-scoring one (the stay
    on a tie).
    """
    if beam_width < 1:
        raise ValueError(f"beam width must be >= 1, got {beam_width}")
    sc = _view(scores, state_len)
    f, n = sc.shape[0], sc.shape[1]
    q = n // 4
    beta = crf_backward(scores, state_len)
    tr = _Trie()
    seeds = sorted(range(n), key=lambda s: (-beta[0][s], s))[:beam_width]
    hyps = [tr.add(-1, 0, s) for s in seeds]
    fsc = np.zeros(len(hyps), np.float32)
    back: list[list[tuple[int, bool]]] = []  # per frame, per kept hypothesis: (prev, moved)
    for t in range(f):
        slot = {node: i for i, node in enumerate(hyps)}
        nc = 5 * len(hyps)
        cval = np.full(nc, NEG, np.float32)
        cstate = np.zeros(nc, np.int64)
        alive = np.zeros(nc, bool)
        cback = [(c // 5, c % 5 > 0) for c in range(nc)]
        for i, node in enumerate(hyps):
            p = tr.state[node]
            cval[5 * i], cstate[5 * i], alive[5 * i] = fsc[i] + sc[t, p, 0], p, True
        for i, node in enumerate(hyps):
            p = tr.state[node]
            for b in range(4):
                s = (p * 4 + b) % n
                v = np.float32(fsc[i] + sc[t, s, 1 + p // q])
                j = slot.get(tr.child[node][b], -1)
                if j >= 0:  # the same prefix and state is already a hypothesis: merge
                    if v > cval[5 * j]:
                        cback[5 * j] = (i, True)
                    cval[5 * j] = _lse2(cval[5 * j], v)
                else:
                    c = 5 * i + 1 + b
                    cval[c], cstate[c], alive[c] = v, s, True
        rank = (cval + beta[t + 1][cstate]).astype(np.float32)
        sel = sorted(np.flatnonzero(alive).tolist(), key=lambda c: (-rank[c], c))[:beam_width]
        new = []
        for c in sel:
            i, r = divmod(c, 5)
            node = hyps[i]
            if r:
                child = tr.child[node][r - 1]
                node = child if child >= 0 else tr.add(node, r, int(cstate[c]))
            new.append(node)
        back.append([cback[c] for c in sel])
        hyps = new
        fsc = (cval[sel] - cval[sel[0]]).astype(np.float32)
    moves = np.zeros(f, np.uint8)
    j = 0
    for t in range(f - 1, -1, -1):
        j, moved = back[t][j]
        moves[t] = moved
    return tr.labels(hyps[0]), moves
