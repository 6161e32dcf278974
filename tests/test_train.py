"""Student training: loss goes down on a tiny synthetic task, resume, schedule, export."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tools.arch import ArchConfig, Student, set_skip_scale  # noqa: E402
from tools.train import (  # noqa: E402
    TrainConfig,
    lr_at,
    progress,
    resample_matrix,
    skip_scale_at,
    train,
)

pytestmark = pytest.mark.tools

LEVELS = {1: -1.2, 2: -0.4, 3: 0.4, 4: 1.2}


def _synthetic(folder: Path, n: int = 96, t: int = 480, seed: int = 0) -> Path:
    """Chunks whose signal is a noisy square wave of base levels (6 samples per base)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    nb = t // 6
    labels = rng.integers(1, 5, (n, nb)).astype(np.uint8)
    for row in labels:  # no immediate repeats: each base is visibly a new level
        for j in range(1, nb):
            while row[j] == row[j - 1]:
                row[j] = rng.integers(1, 5)
    sig = np.repeat(np.vectorize(LEVELS.get)(labels), 6, axis=1).astype(np.float32)
    sig += rng.normal(0, 0.1, sig.shape).astype(np.float32)
    teacher = np.full((n, t // 3, 5), np.log(0.25), np.float16)
    for name in ("train", "val"):
        np.savez(folder / f"{name}.npz", signal=sig, labels=labels,
                 label_len=np.full(n, nb, np.int32),
                 read_id=np.array([f"r{i // 8}" for i in range(n)]), teacher=teacher)
    ref = "".join("NACGT"[b] for b in labels.ravel()[:3000])
    (folder / "ref.fa").write_text(f">r\n{ref}\n")
    np.savez(folder / "val_reads.npz", read_id=np.array(["a"]), offsets=np.array([0, t * 4]),
             signal=sig[:4].ravel(), reference=np.array(str(folder / "ref.fa")))
    return folder


def _cfg(folder: Path, **kw) -> TrainConfig:
    arch = ArchConfig(channels=16, depth=2, kernel=5, stem_kernel=5, stride=3).to_dict()
    base = dict(run="t", train=str(folder / "train.npz"), val=str(folder / "val.npz"),
                val_reads=str(folder / "val_reads.npz"), out=str(folder / "run"), arch=arch,
                batch_size=16, lr=1e-2, max_steps=60, kd_alpha=0.0, ckpt_minutes=1e9,
                commit=False, threads=1, noise=0.0, gain=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_training_run_reduces_ctc(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path / "d")
    out = train(_cfg(folder))
    rows = (out / "log.csv").read_text().strip().split("\n")
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert int(last["step"]) == 60
    first_loss = float(np.log(5) * 2)  # untrained: about uniform over 5 classes
    assert float(last["train_ctc"]) < first_loss * 0.8
    assert float(last["val_loss"]) < first_loss * 0.8
    st = torch.load(out / "last.pt", weights_only=False)
    assert st["step"] == 60 and "optimizer" in st and "rng" in st


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path / "d", n=32)
    cfg = _cfg(folder, max_steps=4)
    train(cfg)
    cfg2 = _cfg(folder, max_steps=6)
    train(cfg2, resume=Path(cfg.out) / "last.pt")
    st = torch.load(Path(cfg.out) / "last.pt", weights_only=False)
    assert st["step"] == 6


def test_schedules() -> None:
    cfg = TrainConfig(run="x", train="", val="", val_reads="", out="", arch={"skips": True},
                      max_steps=100, lr=1.0, warmup=0.1, skipclip_start=0.5, skipclip_end=0.7)
    assert progress(cfg, 50, 0.0) == 0.5
    assert lr_at(cfg, 0.05) == pytest.approx(0.5)
    assert lr_at(cfg, 0.1) == pytest.approx(1.0)
    assert lr_at(cfg, 1.0) == pytest.approx(0.01)
    assert skip_scale_at(cfg, 0.4) == 1.0 and skip_scale_at(cfg, 0.6) == pytest.approx(0.5)
    assert skip_scale_at(cfg, 0.8) == 0.0
    timed = TrainConfig(**{**cfg.__dict__, "hours": 1.0})
    assert progress(timed, 1, 1800.0) == 0.5


def test_resample_matrix_preserves_probability() -> None:
    r = resample_matrix(600, 3, 450, 4)
    np.testing.assert_allclose(r.sum(1).numpy(), 1.0, atol=1e-6)
    # student frame 0 covers samples 0..3: teacher frame 0 (3 samples) + 1/4 of frame 1
    assert r[0, 0] == pytest.approx(0.75) and r[0, 1] == pytest.approx(0.25)


def test_skip_scale_zero_equals_skip_free_network() -> None:
    torch.manual_seed(0)
    with_skips = Student(ArchConfig(channels=8, depth=2, kernel=5, stride=3, skips=True))
    plain = Student(ArchConfig(channels=8, depth=2, kernel=5, stride=3, skips=False))
    plain.load_state_dict(with_skips.state_dict())
    x = torch.randn(1, 1, 300)
    with_skips.eval()
    plain.eval()
    assert not torch.allclose(with_skips(x), plain(x))
    set_skip_scale(with_skips, 0.0)
    assert torch.allclose(with_skips(x), plain(x))


def _finetune_args(data: Path, out: Path, start: Path, steps: int) -> argparse.Namespace:
    """``tools train --init-from START --max-steps STEPS`` arguments (the CLI's namespace)."""
    return argparse.Namespace(
        run="p", data=data, out=out, resume=None, init_from=start,
        max_steps=steps, channels=128, depth=8, kernel=25, stem_kernel=15, stride=4,
        no_skips=False, no_commit=True, batch_size=8, lr=1e-3, kd_alpha=0.0, kd_tau=None,
        skipclip_start=None, skipclip_end=None, seed=None, ckpt_minutes=1e9,
        commit_minutes=None, threads=1, hours=None)


def test_export_folds_batchnorm_and_runs_in_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from tools.compress import export_onnx, fold

    torch.manual_seed(0)
    model = Student(ArchConfig(channels=8, depth=2, kernel=5, stride=4, skips=False))
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    folded = fold(model)
    path = export_onnx(folded, tmp_path / "model.onnx", length=400)
    x = np.random.default_rng(0).standard_normal((3, 1, 800)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logprobs"], {"signal": x})[0]
    want = model(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (3, 200, 5)
    np.testing.assert_allclose(got, want, atol=1e-4)
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and "Add" not in ops
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())


def test_pruned_student_fine_tunes_resumes_and_exports(tmp_path: Path) -> None:
    """``--init-from`` a pruned student keeps its per-layer widths and stays skip-free."""
    from tools.compress import load_student, save_student, set_skip_scale
    from tools.export import load_checkpoint
    from tools.prune import structured
    from tools.train import run as train_cli

    folder = _synthetic(tmp_path / "d", n=32)
    torch.manual_seed(0)
    parent = Student(ArchConfig(channels=16, depth=2, kernel=5, stem_kernel=5, stride=3))
    set_skip_scale(parent, 0.0)
    pruned = structured(parent.eval(), 0.5)
    widths = [b.pw.out_channels for b in pruned.blocks]
    assert widths[0] < 16
    start = save_student(pruned, tmp_path / "p.pt")
    x = torch.randn(1, 1, 300)
    before = load_student(start)[0](x)
    torch.testing.assert_close(before, pruned(x))  # the file holds the pruned network

    args = _finetune_args(folder, tmp_path / "run", start, steps=3)
    assert train_cli(args) == 0
    model, st = load_checkpoint(tmp_path / "run" / "last.pt")
    assert [b.pw.out_channels for b in model.blocks] == widths
    assert st["config"]["arch"]["skips"] is False and st["config"]["arch"]["channels"] == 16
    assert not torch.allclose(model(x), before)  # it trained
    train_cli(argparse.Namespace(**{**vars(args), "init_from": None, "max_steps": 5,
                                    "resume": tmp_path / "run" / "last.pt"}))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 5
    from tools.compress import export_onnx, fold

    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(fold(model), tmp_path / "m.onnx", length=300)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logprobs"], {"signal": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_export_cli_writes_a_card_the_device_loads(tmp_path: Path) -> None:
    """``tools export`` of a pruned, trained checkpoint: card fields, sha256, engine output."""
    pytest.importorskip("onnxruntime")
    from edgecall import engines
    from edgecall.models import ModelError, load_card, verify
    from tools.compress import save_student
    from tools.export import load_checkpoint
    from tools.export import register as export_register
    from tools.prune import register as prune_register
    from tools.train import run as train_cli

    folder = _synthetic(tmp_path / "d", n=32)
    torch.manual_seed(0)
    parent = Student(ArchConfig(channels=16, depth=2, kernel=5, stem_kernel=5, stride=3))
    set_skip_scale(parent, 0.0)
    save_student(parent.eval(), tmp_path / "parent.pt")
    start = tmp_path / "p.pt"
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    prune_register(sub)
    export_register(sub)
    ns = parser.parse_args(["prune", str(tmp_path / "parent.pt"), "--amount", "0.5",
                            "--out", str(start), "--threads", "1"])
    assert ns.func(ns) == 0
    args = _finetune_args(folder, tmp_path / "run", start, steps=2)
    assert train_cli(args) == 0
    ckpt = tmp_path / "run" / "last.pt"
    out = tmp_path / "models" / "tiny"
    ns = parser.parse_args(["export", str(ckpt), str(out), "--chunk", "600", "--overlap", "60"])
    assert ns.func(ns) == 0

    card = load_card(out)
    verify(card)
    model, _ = load_checkpoint(ckpt)
    widths = [b.pw.out_channels for b in model.blocks]
    arch = card.raw["architecture"]
    assert card.stride == 3 and card.chunk_size == 600 and card.pore == "r9.4.1"
    assert arch["block_channels"] == widths and arch["params"] == sum(
        p.numel() for p in model.parameters())
    assert card.raw["training"]["step"] == 2
    command = card.raw["training"]["command"]
    assert f"--init-from {start}" in command and "--max-steps 2" in command
    assert "--hours" not in command  # no time limit was set
    assert (f"tools prune {tmp_path / 'parent.pt'} --method structured --amount 0.5"
            in card.raw["training"]["command"])  # the pruning step is recorded too
    assert widths[0] < 16
    x = np.random.default_rng(1).standard_normal((2, 1, 600)).astype(np.float32)
    got = engines.create("onnx", card, threads=1).run(x)
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)

    (out / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:-8])
    with pytest.raises(ModelError, match="sha256"):
        verify(card)
    bad = parser.parse_args(["export", str(ckpt), str(tmp_path / "x"), "--chunk", "601"])
    with pytest.raises(ValueError, match="multiples of the stride 3"):
        bad.func(bad)


def test_qat_with_the_students_own_recipe(tmp_path: Path) -> None:
    """``qat_recipe`` trains the fake-quantised student on its own labelled set (CTC +
    teacher KD) and lowers its CTC loss there; a missing training set is one clear error."""
    pytest.importorskip("onnxruntime")
    from edgecall.errors import InputError
    from tools.compress import fold
    from tools.quantize import export_qat, qat_recipe, run_onnx
    from tools.train import ChunkData, losses

    folder = _synthetic(tmp_path / "d", n=64)
    torch.manual_seed(0)
    student = Student(ArchConfig(channels=16, depth=2, kernel=5, stem_kernel=5, stride=3,
                                 skips=False)).eval()
    cfg = TrainConfig(run="q", train=str(folder / "train.npz"), val=str(folder / "val.npz"),
                      val_reads="", out=str(tmp_path / "o"), arch=student.cfg.to_dict(),
                      batch_size=16, kd_alpha=0.5, noise=0.0, gain=0.0)
    data = ChunkData(cfg.train)
    x, lens = data.signal[:, None], data.label_len
    labels = data.labels[:, :int(lens.max())]
    net = fold(student)
    with torch.no_grad():
        before = float(losses(net, x, labels, lens, None, None, cfg)[0])
    net = qat_recipe(net, vars(cfg), steps=150, lr=1e-2)
    assert all(seen for _, _, seen in net.qat_ranges)  # every conv input got a range
    with torch.no_grad():
        after = float(losses(net, x, labels, lens, None, None, cfg)[0])
    assert after < 0.9 * before
    q = export_qat(net, tmp_path / "q.onnx", data.signal[:16].numpy(), length=480)
    with torch.no_grad():
        fake = net(x[:8]).numpy()
    got = run_onnx(q, data.signal[:8].numpy())
    assert (got.argmax(-1) == fake.argmax(-1)).mean() > 0.9
    with pytest.raises(InputError, match="training set"):
        qat_recipe(fold(student), {**vars(cfg), "train": str(tmp_path / "none.npz")},
                   steps=1, lr=1e-3)


def test_training_command_records_a_non_default_seed() -> None:
    from tools.export import training_command

    cfg = {"run": "r", "lr": 5e-4, "kd_alpha": 0.2, "seed": 2, "hours": 0, "threads": 1}
    assert training_command(cfg) == ("python -m tools.train --run r --lr 0.0005 "
                                     "--kd-alpha 0.2 --seed 2")
    assert "--seed" not in training_command({**cfg, "seed": 1})


def test_kd_on_unlabelled_chunks_reduces_the_kd_loss(tmp_path: Path) -> None:
    """Chunks with CTC weight 0 (no usable label) train on the teacher's posteriors alone."""
    from tools.train import ChunkData, losses, train_step

    folder = _synthetic(tmp_path / "d", n=64)
    z = dict(np.load(folder / "train.npz"))
    n, nb = z["labels"].shape
    teacher = np.full((n, z["signal"].shape[1] // 3, 5), np.log(0.01), np.float32)
    teacher[:, :, 0] = np.log(0.96)
    for i in range(n):  # a peaky teacher that knows the bases (2 frames of 3 samples each)
        teacher[i, np.arange(nb) * 2, 0] = np.log(0.01)
        teacher[i, np.arange(nb) * 2, z["labels"][i]] = np.log(0.96)
    z["teacher"] = teacher.astype(np.float16)
    z["weight"] = np.zeros(n, np.float32)  # unlabelled: the label must not count
    z["labels"][:] = 1  # a wrong label that CTC would learn if it counted
    np.savez(folder / "train.npz", **z)
    cfg = _cfg(folder, kd_alpha=0.5)
    data = ChunkData(cfg.train)
    assert data.weight is not None and float(data.weight.sum()) == 0.0
    torch.manual_seed(0)
    net = Student(ArchConfig(**cfg.arch))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, lens = data.signal[:, None], data.label_len
    with torch.no_grad():
        _, ctc0, kd0 = losses(net, x, data.labels, lens, data.teacher, None, cfg, data.weight)
    assert ctc0 == 0.0
    for step in range(80):
        train_step(net, opt, data, torch.arange(step * 16, step * 16 + 16) % n, None, cfg)
    with torch.no_grad():
        _, _, kd1 = losses(net, x, data.labels, lens, data.teacher, None, cfg, data.weight)
        calls = net(x[:4]).argmax(-1)
    assert kd1 < 0.5 * kd0
    # it learned the teacher's bases, not the (ignored) all-A label
    assert (calls != 0).sum() > 0 and set(calls[calls != 0].tolist()) - {1}
