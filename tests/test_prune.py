"""tools.prune: unstructured masks, structured channel removal, delayed masking, CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tools import prune as P  # noqa: E402
from tools.__main__ import main as tools_main  # noqa: E402
from tools.arch import ArchConfig, Student  # noqa: E402
from tools.compress import fold, load_student, save_student, set_skip_scale  # noqa: E402

pytestmark = pytest.mark.tools


def _student(skips: bool = False, seed: int = 0, channels: int = 24) -> Student:
    """A small student with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    m = Student(ArchConfig(channels=channels, depth=3, kernel=9, stem_kernel=9, skips=skips))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def _x(n: int = 3, t: int = 300) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).standard_normal((n, 1, t)).astype("f4"))


def _widths(m: Student) -> list[int]:
    return [m.get_submodule(s.producer).out_channels for s in P.spaces(m)]


@pytest.mark.parametrize("skips", [False, True])
def test_structured_removes_channels_and_matches_masked_model(skips: bool) -> None:
    m = _student(skips)
    keep = P.select_channels(m, 0.5)
    small = P.remove_channels(m, keep)
    assert _widths(small) == [12, 12, 12, 12]
    assert small.blocks[1].dw.weight.shape == (12, 1, 9)
    assert small.blocks[1].pw.weight.shape == (12, 12, 1)
    assert small.head.weight.shape == (5, 12, 1)
    assert P.count_params(small) < 0.4 * P.count_params(m)
    hooks = P.channel_mask_hooks(m, keep)
    with torch.no_grad():
        masked, out = m(_x()), small(_x())
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=0)
    with torch.no_grad():  # and removing channels really changed the function
        assert (m(_x()) - out).abs().max() > 1e-3


def test_residual_ties_keep_identical_channels() -> None:
    m = _student(skips=True)
    keep = P.select_channels(m, 0.5)
    assert P.tied_groups(m) == [[0, 1, 2, 3]]
    assert all(torch.equal(keep[0], keep[i]) for i in (1, 2, 3))
    set_skip_scale(m, 0.0)  # SkipClip finished: spaces are independent
    assert P.tied_groups(m) == [[0], [1], [2], [3]]


def test_structured_keeps_highest_l1_filters() -> None:
    m = _student()
    with torch.no_grad():
        m.blocks[0].pw.weight[:6].mul_(100.0)  # make channels 0..5 of space 1 dominant
    keep = P.select_channels(m, 0.75, multiple=1)
    assert keep[1].tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_sparsity_survives_fine_tuning(scope: str) -> None:
    m = _student()
    chunks = np.random.default_rng(0).standard_normal((16, 300)).astype("f4")
    pruned = P.prune(m, "unstructured", 0.7, scope=scope, chunks=chunks, steps=3)
    assert P.sparsity(pruned) == pytest.approx(0.7, abs=0.01)
    if scope == "layer":
        for w in P.prunable_weights(pruned).values():
            assert float((w == 0).float().mean()) == pytest.approx(0.7, abs=0.1)
    assert P.sparsity(m) == 0.0  # the parent is untouched


def test_delayed_masking_shrinks_and_runs() -> None:
    m = _student()
    chunks = np.random.default_rng(0).standard_normal((16, 300)).astype("f4")
    small = P.prune(m, "delayed", 0.5, chunks=chunks, steps=4, batch_size=4)
    assert _widths(small) == [12, 12, 12, 12]
    with torch.no_grad():
        assert small(_x()).shape == (3, 100, 5)


def test_iterative_schedule_reaches_final_width() -> None:
    m = _student()
    chunks = np.random.default_rng(0).standard_normal((8, 300)).astype("f4")
    small = P.iterative(m, "structured", [0.25, 0.5], chunks=chunks, steps_per_stage=1,
                        batch_size=4, multiple=1)
    assert _widths(small) == [12, 12, 12, 12]


def test_pruned_student_file_round_trip_and_fold(tmp_path: Path) -> None:
    small = P.structured(_student(), 0.5)
    path = save_student(small, tmp_path / "s.pt", method="structured")
    again, meta = load_student(path)
    assert meta["method"] == "structured"
    with torch.no_grad():
        torch.testing.assert_close(again(_x()), small(_x()))
        torch.testing.assert_close(fold(again)(_x()), small(_x()), atol=1e-5, rtol=0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="amount"):
        P.unstructured_masks(_student(), 1.5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        P.prune(_student(), "random", 0.5)
    with pytest.raises(ValueError, match="delayed masking trains"):
        P.prune(_student(), "delayed", 0.5)


def test_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tools_main(["prune", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pt: no such student checkpoint" in err
    ckpt = save_student(_student(), tmp_path / "p.pt")
    assert tools_main(["prune", str(ckpt), "--steps", "5", "--out", str(tmp_path / "o.pt")]) == 1
    assert "--data" in capsys.readouterr().err


def test_cli_structured_without_fine_tuning(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_student(_student(), tmp_path / "p.pt")
    out = tmp_path / "small.pt"
    assert tools_main(["prune", str(ckpt), "--method", "structured", "--amount", "0.5",
                       "--out", str(out)]) == 0
    small, _ = load_student(out)
    assert _widths(small) == [12, 12, 12, 12]
    assert "params" in capsys.readouterr().out
