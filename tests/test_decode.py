"""CTC decoding: greedy and beam search on hand-made posteriors with known answers.

The posteriors are built so that the right sequence is known: clean ones where
every decoder must find it, and "split" ones where a base's probability mass is
spread over two frames so that the best path (greedy) drops it while the most
probable labelling (beam search) keeps it. Both backends are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecall import kernels_backend as kb
from edgecall.decode import decode, greedy_ref

ALPHABET = "NACGT"


def _frames(spec: list[dict[int, float]]) -> np.ndarray:
    """Log-posteriors from per-frame {class: prob} dicts (rest spread evenly)."""
    out = np.empty((len(spec), 5), np.float32)
    for t, probs in enumerate(spec):
        rest = (1.0 - sum(probs.values())) / (5 - len(probs))
        out[t] = [probs.get(c, rest) for c in range(5)]
    return np.log(out).astype(np.float32)


def _encode(seq: str, rng: np.random.Generator, split_every: int = 0) -> np.ndarray:
    """Posteriors for ``seq``: a clean base is 1-3 confident frames; every
    ``split_every``-th base is two frames of p=0.45 with blank 0.5 (greedy drops it)."""
    spec: list[dict[int, float]] = [{0: 0.9}]
    for i, base in enumerate(seq):
        c = ALPHABET.index(base)
        if split_every and i % split_every == split_every - 1:
            spec += [{c: 0.45, 0: 0.5}, {c: 0.45, 0: 0.5}]
        else:
            spec += [{c: 0.9}] * int(rng.integers(1, 4))
        spec += [{0: 0.9}] * int(rng.integers(1, 3))
    return _frames(spec)


def _edit(a: str, b: str) -> int:
    """Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.fixture(params=["compiled", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "numpy":
        monkeypatch.setenv("EDGECALL_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("EDGECALL_PURE_PYTHON", raising=False)
        try:
            kb.kernels(pure=False)
        except kb.KernelsMissing as exc:
            pytest.skip(str(exc))
    return request.param


def test_beam_recovers_split_mass_greedy_misses(backend: str) -> None:
    # two frames each 0.4 blank / 0.35 A: best path is "", but P("A") = 0.4025 > P("") = 0.16
    lp = _frames([{0: 0.4, 1: 0.35}, {0: 0.4, 1: 0.35}])
    assert decode(lp, method="greedy").sequence == ""
    got = decode(lp, method="beam", beam_width=4)
    assert got.sequence == "A" and got.moves.sum() == 1 and len(got.quality) == 1


@pytest.mark.parametrize("seed", range(5))
def test_beam_never_worse_than_greedy(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    seq = "".join(rng.choice(list("ACGT"), 40))
    seq = seq.replace("AA", "AC")  # keep repeats too: "GG" etc. need a blank between
    for split in (0, 3):
        lp = _encode(seq, rng, split_every=split)
        greedy, beam = decode(lp), decode(lp, method="beam", beam_width=8)
        assert _edit(beam.sequence, seq) <= _edit(greedy.sequence, seq)
        assert beam.moves.sum() == len(beam.sequence)
        if split == 0:
            assert greedy.sequence == seq == beam.sequence
        else:
            assert beam.sequence == seq and greedy.sequence != seq


def test_repeats_need_a_blank(backend: str) -> None:
    a = {1: 0.9}
    lp = _frames([a, a, {0: 0.9}, a, {2: 0.9}, {2: 0.9}])
    for method in ("greedy", "beam"):
        d = decode(lp, method=method, beam_width=5)
        assert d.sequence == "AAC"
        np.testing.assert_array_equal(d.moves, [1, 0, 0, 1, 1, 0])


def test_greedy_backends_agree_and_match_reference(backend: str) -> None:
    rng = np.random.default_rng(7)
    z = rng.standard_normal((500, 5)).astype(np.float32) * 2
    lp = (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)
    labels, probs, moves = kb.kernels().greedy(lp)
    ref = greedy_ref(lp)
    np.testing.assert_array_equal(labels, ref[0])
    np.testing.assert_allclose(probs, ref[1], rtol=1e-5)
    np.testing.assert_array_equal(moves, ref[2])
    d = decode(lp)
    assert len(d.sequence) == len(d.quality) == moves.sum()
    assert all(33 <= ord(q) <= 83 for q in d.quality)


def test_decode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="posteriors must be"):
        decode(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown decoder"):
        decode(np.zeros((4, 5), np.float32), method="viterbi")
    with pytest.raises(ValueError, match="beam width"):
        decode(np.zeros((4, 5), np.float32), method="beam", beam_width=0)


def test_empty_posteriors(backend: str) -> None:
    for method in ("greedy", "beam"):
        d = decode(np.zeros((0, 5), np.float32), method=method)
        assert d.sequence == "" and d.moves.shape == (0,)
