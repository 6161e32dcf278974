"""A small numpy Viterbi over blank-expanded CRF scores, for checking imports on the workstation.

The device decodes with ``edgecall.decode`` (compiled Viterbi/beam, qscores); this
best-path reference only lets ``import-model`` compare an FP32 and an INT8 graph
by their calls. Layout of ``scores`` [T, S * 5] with S = 4**state_len: per
destination state ``s`` column 0 stays, column ``1 + k`` moves from state
``k * 4**(state_len-1) + s // 4`` and emits base ``s % 4``.
"""

from __future__ import annotations

import numpy as np


def predecessors(state_len: int, n_base: int = 4) -> np.ndarray:
    """``[S, n_base]``: the source state of each move into each state."""
    n_states = n_base ** state_len
    s = np.arange(n_states)[:, None]
    k = np.arange(n_base)[None, :]
    return k * n_base ** (state_len - 1) + s // n_base


def viterbi(scores: np.ndarray, state_len: int, alphabet: str = "ACGT") -> str:
    """Best path through the CRF scores of one read or chunk -> called bases."""
    n_base = len(alphabet)
    n_states = n_base ** state_len
    s = np.asarray(scores, np.float32).reshape(len(scores), n_states, n_base + 1)
    pred = predecessors(state_len, n_base)
    a = np.zeros(n_states, np.float32)
    back = np.empty((len(s), n_states), np.int8)
    rows = np.arange(n_states)
    for t in range(len(s)):
        cand = np.concatenate([(a + s[t, :, 0])[:, None], a[pred] + s[t, :, 1:]], axis=1)
        back[t] = cand.argmax(1)
        a = cand[rows, back[t]]
    state, out = int(a.argmax()), []
    for t in range(len(s) - 1, -1, -1):
        k = int(back[t, state])
        if k:
            out.append(alphabet[state % n_base])
            state = int(pred[state, k - 1])
    return "".join(out[::-1])


def greedy_ctc(logp: np.ndarray, alphabet: str = "NACGT") -> str:
    """Greedy CTC over ``[T, C]`` log-probs (class 0 the blank)."""
    best = np.asarray(logp).argmax(1)
    keep = (best != 0) & (best != np.concatenate(([0], best[:-1])))
    return "".join(alphabet[i] for i in best[keep])
