"""deepnano-blitz teacher: weight parsing, chunking, beam search, and the reference output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tools.teacher import (  # noqa: E402
    CHUNK,
    DeepnanoNet,
    DeepnanoTeacher,
    approx_exp,
    beam_search,
    call_spans,
    default_weights,
    load_tensors,
    normalise_raw,
)

pytestmark = pytest.mark.tools


def _write_weights(path: Path, h: int, seed: int = 0) -> Path:
    """A random weight file in the deepnano-blitz text format."""
    rng = np.random.default_rng(seed)
    shapes = [(66, h), (h,)]
    for _ in range(4):
        shapes += [(h, h), (h, h), (h,), (h,), (h, h), (h, h), (h, h), (h, h),
                   (h,), (h,), (h,), (h,)]
    shapes += [(h, 5), (5,)]
    with open(path, "w") as fh:
        for s in shapes:
            fh.write(" ".join(map(str, s)) + "\n")
            fh.write(" ".join(f"{v:.6f}" for v in rng.normal(0, 0.3, int(np.prod(s)))) + "\n")
    return path


def test_load_and_forward_shapes(tmp_path: Path) -> None:
    t = load_tensors(_write_weights(tmp_path / "rnn8.txt", 8))
    assert len(t) == 52 and t[0].shape == (66, 8) and t[50].shape == (8, 5)
    n_params = sum(a.size for a in t)
    assert n_params == 66 * 8 + 8 + 4 * (6 * 64 + 6 * 8) + 5 * 8 + 5
    net = DeepnanoNet(t)
    out = net(torch.randn(2, 1, CHUNK))
    assert out.shape == (2, CHUNK // 3, 5)
    np.testing.assert_allclose(out.sum(-1).numpy(), 1.0, atol=1e-5)


def test_approx_matches_exact_closely(tmp_path: Path) -> None:
    t = load_tensors(_write_weights(tmp_path / "rnn8.txt", 8))
    x = torch.randn(1, 1, CHUNK)
    exact = DeepnanoNet(t)(x)
    approx = DeepnanoNet(t, approx=True)(x)
    assert float((exact - approx).abs().max()) < 0.1  # Schraudolph exp: a few % error
    assert not torch.equal(exact, approx)


def test_approx_exp_values() -> None:
    p = torch.tensor([0.0, 1.0, -1.0, 2.5, -200.0])
    got = approx_exp(p).numpy()
    np.testing.assert_allclose(got[:4], np.exp(p.numpy()[:4]), rtol=0.07)
    assert got[4] == 0.0  # saturates at 0 like the Rust u32 cast


def test_truncated_weight_file_is_an_error(tmp_path: Path) -> None:
    path = _write_weights(tmp_path / "rnn8.txt", 8)
    lines = path.read_text().split("\n")
    (tmp_path / "bad.txt").write_text("\n".join(lines[:40]))
    with pytest.raises(ValueError, match="expected 52 tensors"):
        load_tensors(tmp_path / "bad.txt")


def test_call_spans_legacy_and_current() -> None:
    n = 5000
    legacy = call_spans(n, legacy=True)
    assert legacy == [(0, 0, 510), (1500, 10, 510), (3000, 10, 510)]
    cur = call_spans(n)
    assert cur[:3] == legacy and cur[3] == (n - CHUNK, (4500 - (n - CHUNK)) // 3 + 10, 520)
    # the kept frames tile the read without gaps: last kept sample is the read end
    assert cur[3][0] + 3 * cur[3][2] == n
    assert call_spans(CHUNK - 1) == []


def test_beam_search_simple_and_repeats() -> None:
    def frames(labels: list[int]) -> np.ndarray:
        p = np.full((len(labels), 5), 0.01, np.float32)
        p[np.arange(len(labels)), labels] = 0.96
        return p

    seq, qual = beam_search(frames([0, 1, 1, 0, 2, 0, 2, 3, 4, 4, 0]))
    assert seq == "ACCGT"  # blank splits C C, repeats of A and T merge
    assert len(qual) == 5 and all(33 < ord(c) for c in qual)


def test_beam_beats_greedy_on_split_mass() -> None:
    # frame 1: blank 0.4, A 0.35, C 0.25 -> greedy says blank, beam sums A paths
    p = np.array([[0.1, 0.8, 0.05, 0.03, 0.02],
                  [0.4, 0.35, 0.25, 0.0, 0.0],
                  [0.1, 0.8, 0.05, 0.03, 0.02]], np.float32)
    seq, _ = beam_search(p)
    assert seq in ("A", "AA")
    assert seq == "A"  # A-A-A merges (mass 0.8*0.35*0.8 + ...) beats A-blank-A


@pytest.mark.realdata
def test_reproduces_deepnano_expected_fastq(shared_data: Path) -> None:
    """rnn64 + Rust approximations + beam 5 + pre-2021 chunking = expected.fastq."""
    import pod5

    fq = (shared_data / "r9.4.1" / "klebsiella" / "deepnano_expected.fastq").read_text()
    lines = fq.split("\n")
    expected = {lines[i][1:].split()[0]: lines[i + 1] for i in range(0, len(lines) - 3, 4)}
    with pod5.Reader(shared_data / "r9.4.1" / "klebsiella" / "reads.pod5") as reader:
        reads = sorted(((str(r.read_id), r.signal.copy()) for r in reader.reads()),
                       key=lambda r: r[1].shape[0])
    torch.set_num_threads(1)
    teacher = DeepnanoTeacher(default_weights(64), approx=True, legacy_chunking=True)
    for rid, raw in reads[:2]:
        seq, _ = teacher.basecall(normalise_raw(raw), 5)
        assert len(seq) > 5000
        assert seq == expected[rid], rid
