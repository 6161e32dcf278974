"""Train a student basecaller: CTC on labels + knowledge distillation, resumable.

Loss = ``(1 - kd_alpha) * CTC(labels) + kd_alpha * tau^2 * KL(teacher_tau || student_tau)``.
The teacher (deepnano-blitz) emits one frame per 3 samples; a student with another
stride gets the teacher's *probabilities* resampled onto its own frame grid by
sample overlap (student frame j covers samples [s*j, s*j+s), each teacher frame
contributes in proportion to its overlap). CTC is indifferent to where inside a
base's samples a spike sits and repeated labels collapse, so the smeared target
still decodes to the teacher's sequence; CTC on the reference/teacher labels
keeps the student's own alignment sharp. ``kd_alpha 0`` disables KD.

Residual connections train faster; from ``skipclip_start`` to ``skipclip_end``
(fractions of the run) every skip is scaled linearly from 1 down to 0 while
training continues (SkipClip-style), so the final network is skip-free and is
saved with ``skips = False``.

State (model, optimizer, step, trained seconds, data order, RNG) goes to
``<out>/last.pt`` every ``ckpt_minutes``; every ``commit_minutes`` it is copied to
``tools/checkpoints/<run>/`` with the CSV log and committed, so another machine
can continue with ``--resume``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tools import cache_dir
from tools.arch import ArchConfig, Student, count_params, set_skip_scale
from tools.compress import macs_per_sample as macs_of
from tools.compress import resize_like, student_from_checkpoint

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
FIELDS = ["step", "epoch", "elapsed_s", "lr", "skip_scale", "train_loss", "train_ctc",
          "train_kd", "chunks_per_s", "val_loss", "val_median_identity",
          "val_mean_identity", "val_mapped"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint)."""

    run: str
    train: str
    val: str
    val_reads: str
    out: str
    arch: dict
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    max_steps: int = 20000
    hours: float = 0.0  # > 0: the schedule runs on wall-clock training time, not steps
    warmup: float = 0.05
    kd_alpha: float = 0.5
    kd_tau: float = 2.0
    skipclip_start: float = 0.55
    skipclip_end: float = 0.8
    noise: float = 0.03
    gain: float = 0.08
    seed: int = 1
    ckpt_minutes: float = 5.0
    commit_minutes: float = 25.0
    threads: int = 2
    commit: bool = True  # copy + git-commit checkpoints under tools/checkpoints/<run>
    init_from: str = ""  # the checkpoint a fine-tuning run started from (provenance)


def resample_matrix(n_in: int, stride_in: int, n_out: int, stride_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` overlap weights mapping frames of one stride onto another."""
    r = np.zeros((n_out, n_in), np.float32)
    for j in range(n_out):
        a, b = j * stride_out, (j + 1) * stride_out
        i0, i1 = a // stride_in, min(n_in, -(-b // stride_in))
        for i in range(i0, i1):
            ov = min(b, (i + 1) * stride_in) - max(a, i * stride_in)
            if ov > 0:
                r[j, i] = ov / stride_out
    return torch.from_numpy(r)


class ChunkData:
    """An in-memory chunk dataset as torch tensors."""

    def __init__(self, path: str) -> None:
        from tools.data import load_dataset

        d = load_dataset(Path(path))
        self.signal = torch.from_numpy(d["signal"])
        self.labels = torch.from_numpy(d["labels"].astype(np.int64))
        self.label_len = torch.from_numpy(d["label_len"].astype(np.int64))
        self.teacher = torch.from_numpy(d["teacher"]) if "teacher" in d else None
        self.weight = torch.from_numpy(d["weight"].astype(np.float32)) if "weight" in d else None
        self.read_id = d["read_id"]

    def __len__(self) -> int:
        return int(self.signal.shape[0])


def progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Fraction of the run done: by training time when ``hours`` is set, else by steps."""
    if cfg.hours > 0:
        return min(1.0, elapsed / (cfg.hours * 3600.0))
    return min(1.0, step / max(cfg.max_steps, 1))


def skip_scale_at(cfg: TrainConfig, f: float) -> float:
    """Residual scale at run fraction ``f`` (1 before SkipClip, 0 after)."""
    if not cfg.arch.get("skips", False):
        return 0.0
    if f <= cfg.skipclip_start:
        return 1.0
    if f >= cfg.skipclip_end:
        return 0.0
    return 1.0 - (f - cfg.skipclip_start) / (cfg.skipclip_end - cfg.skipclip_start)


def lr_at(cfg: TrainConfig, f: float) -> float:
    """Learning rate at run fraction ``f``: linear warm-up, then cosine decay to 1%."""
    if f < cfg.warmup:
        return cfg.lr * max(f / cfg.warmup, 0.02)
    p = min(1.0, (f - cfg.warmup) / max(1e-9, 1.0 - cfg.warmup))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p)))


def augment(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Random per-chunk gain and offset (``cfg.gain``) and white noise (``cfg.noise``)."""
    n = x.shape[0]
    x = x * (1 + cfg.gain * (2 * torch.rand(n, 1) - 1)) + cfg.gain * torch.randn(n, 1)
    return x + cfg.noise * torch.randn_like(x)


def losses(model: Student, x: torch.Tensor, labels: torch.Tensor, lens: torch.Tensor,
           teacher: torch.Tensor | None, rmat: torch.Tensor | None,
           cfg: TrainConfig, weight: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, float, float]:
    """Combined loss and its (ctc, kd) parts for one batch.

    ``weight`` (per chunk) scales each chunk's CTC term: 1 for a reference label, less for
    a basecall label (``tools.data.BASECALL_LABEL_WEIGHT``); distillation is unweighted.
    """
    logp = model(x)  # [N, F, C]
    n, frames, _ = logp.shape
    in_len = torch.full((n,), frames, dtype=torch.long)
    per = F.ctc_loss(logp.transpose(0, 1), labels, in_len, lens, blank=0,
                     reduction="none", zero_infinity=True) / lens.clamp_min(1)
    ctc = per.mean() if weight is None else (per * weight).sum() / weight.sum().clamp_min(1e-6)
    if teacher is None or cfg.kd_alpha <= 0:
        return ctc, float(ctc.detach()), 0.0
    tau = cfg.kd_tau
    tp = torch.exp(teacher.float())  # [N, Ft, C]
    if rmat is not None:
        tp = torch.einsum("jf,nfc->njc", rmat, tp)
    tp = tp.clamp_min(1e-8) ** (1.0 / tau)
    tp = tp / tp.sum(-1, keepdim=True)
    s_logp = F.log_softmax(logp / tau, dim=-1)
    kd = (tp * (tp.log() - s_logp)).sum(-1).mean() * tau * tau
    loss = (1 - cfg.kd_alpha) * ctc + cfg.kd_alpha * kd
    return loss, float(ctc.detach()), float(kd.detach())


def teacher_resampler(data: ChunkData, stride: int) -> torch.Tensor | None:
    """Matrix mapping the stored teacher posteriors (stride 3) onto a student's frames
    (``stride``); None when there are no teacher posteriors or the strides agree."""
    if data.teacher is None or stride == 3:
        return None
    return resample_matrix(int(data.teacher.shape[1]), 3, int(data.signal.shape[1]) // stride,
                           stride)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, data: ChunkData,
               idx: torch.Tensor, rmat: torch.Tensor | None,
               cfg: TrainConfig) -> tuple[float, float, float]:
    """One optimiser step on chunks ``idx`` (augmented): CTC + KD loss, gradient clipped
    to norm 2. Returns (loss, ctc, kd)."""
    x = augment(data.signal[idx], cfg)
    lens = data.label_len[idx]
    labels = data.labels[idx][:, :int(lens.max())]
    teacher = data.teacher[idx] if data.teacher is not None else None
    weight = data.weight[idx] if data.weight is not None else None
    loss, ctc, kd = losses(model, x[:, None], labels, lens, teacher, rmat, cfg, weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
    opt.step()
    return float(loss.detach()), ctc, kd


def greedy(logp: np.ndarray) -> str:
    """Greedy CTC decode to an ACGT string."""
    best = logp.argmax(1)
    keep = (best != 0) & np.concatenate(([True], best[1:] != best[:-1]))
    return "".join("NACGT"[b] for b in best[keep])


@torch.no_grad()
def call_reads(model: Student, signals: list[np.ndarray]) -> list[str]:
    """Whole-read greedy basecalls (the network is convolutional: one pass per read)."""
    stride = model.cfg.stride
    out = []
    for s in signals:
        n = s.shape[0] - s.shape[0] % stride
        lp = model(torch.from_numpy(np.ascontiguousarray(s[:n]))[None, None])[0].numpy()
        out.append(greedy(lp))
    return out


@torch.no_grad()
def validate(model: Student, val: ChunkData, vreads: dict, aligner, cfg: TrainConfig,
             rmat: torch.Tensor | None) -> dict:
    """Validation CTC loss on chunks and greedy identity on whole held-out reads."""
    from tools.evaluate import identities, summarise

    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, len(val), 64):
        x = val.signal[i:i + 64, None]
        lab, ln = val.labels[i:i + 64], val.label_len[i:i + 64]
        loss, ctc, _ = losses(model, x, lab, ln, None, rmat, cfg)
        tot += ctc * x.shape[0]
        cnt += x.shape[0]
    seqs = call_reads(model, vreads["signals"])
    summ = summarise(identities(dict(zip(vreads["ids"], seqs, strict=True)), None, aligner=aligner))
    model.train()
    return {"val_loss": round(tot / max(cnt, 1), 4),
            "val_median_identity": summ["median_identity"],
            "val_mean_identity": summ["mean_identity"], "val_mapped": summ["mapped"]}


def load_val_reads(path: str) -> dict:
    """Held-out whole reads (signals, ids, reference path) from ``val_reads.npz``."""
    with np.load(path, allow_pickle=False) as z:
        off = z["offsets"]
        sig = z["signal"]
        return {"ids": [str(r) for r in z["read_id"]],
                "signals": [sig[off[i]:off[i + 1]] for i in range(len(off) - 1)],
                "reference": str(z["reference"])}


def git_commit(paths: list[Path], message: str) -> None:
    """Commit only ``paths`` (retrying while another process holds the index lock)."""
    rel = [str(p.relative_to(REPO)) for p in paths]
    for _ in range(20):
        if not (REPO / ".git" / "index.lock").exists():
            add = subprocess.run(["git", "add", "--", *rel], cwd=REPO, capture_output=True)
            if add.returncode == 0:
                res = subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel],
                                     cwd=REPO, capture_output=True, text=True)
                if res.returncode == 0 or "nothing" in res.stdout + res.stderr:
                    return
        time.sleep(3)
    log.warning("could not commit %s", rel)


def save_state(path: Path, model, opt, step: int, epoch: int, pos: int,
               perm: torch.Tensor, cfg: TrainConfig, elapsed: float) -> None:
    """Write a full training checkpoint atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "epoch": epoch, "pos": pos,
                "perm": perm, "config": asdict(cfg), "elapsed": elapsed,
                "skip_scale": skip_scale_at(cfg, progress(cfg, step, elapsed)),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}}, tmp)
    tmp.replace(path)


def train(cfg: TrainConfig, resume: Path | None = None, init: Path | None = None,
          loaded: dict | None = None) -> Path:
    """Run (or continue) training; returns the output folder.

    ``resume`` continues a run exactly (model, optimizer, data order, RNG);
    ``init`` starts a new run (new optimizer and schedule) from a checkpoint's
    weights, e.g. fine-tuning after pretraining (``loaded``: that file, already read).
    """
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    arch = ArchConfig(**cfg.arch)
    start = loaded if loaded is not None and resume is None else \
        torch.load(resume if resume is not None else init, weights_only=False) \
        if resume is not None or init is not None else None
    model = Student(arch)
    if start is not None:  # pruned students have per-layer widths: take the shapes first
        resize_like(model, start["model"])
        model.load_state_dict(start["model"])
        log.info("weights from %s", resume if resume is not None else init)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = ChunkData(cfg.train)
    val = ChunkData(cfg.val)
    vreads = load_val_reads(cfg.val_reads)
    from tools.evaluate import make_aligner

    aligner = make_aligner(Path(vreads["reference"]))
    rmat = teacher_resampler(data, arch.stride)
    step, epoch, pos, elapsed = 0, 0, 0, 0.0
    perm = torch.randperm(len(data))
    if resume is not None:
        st = start
        opt.load_state_dict(st["optimizer"])
        step, epoch, pos, perm, elapsed = (st["step"], st["epoch"], st["pos"], st["perm"],
                                           st["elapsed"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        if len(perm) != len(data):  # dataset rebuilt: start a fresh epoch order
            perm, pos = torch.randperm(len(data)), 0
        log.info("resumed %s at step %d (%.0f s trained)", resume, step, elapsed)
    log.info("run %s: %d params, %.0f MACs/sample, %d train / %d val chunks, "
             "%s", cfg.run, count_params(model), macs_of(model, arch.stride), len(data), len(val),
             f"{cfg.hours} h" if cfg.hours > 0 else f"{cfg.max_steps} steps")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    csv_path = out / "log.csv"
    if resume is not None and not csv_path.exists() and (resume.parent / "log.csv").exists():
        shutil.copy(resume.parent / "log.csv", csv_path)  # continue the committed log
    if not csv_path.exists():
        with open(csv_path, "w", newline="") as fh:
            csv.writer(fh).writerow(FIELDS)
    ckdir = REPO / "tools" / "checkpoints" / cfg.run
    model.train()
    t_start = time.time() - elapsed
    last_ckpt = last_commit = time.time()
    run_loss = run_ctc = run_kd = 0.0
    run_n = 0
    t_window = time.time()
    chunks_window = 0
    frac = progress(cfg, step, elapsed)
    while frac < 1.0:
        if pos + cfg.batch_size > len(data):
            epoch += 1
            pos = 0
            perm = torch.randperm(len(data))
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        n = len(idx)
        frac = progress(cfg, step, time.time() - t_start)
        lr = lr_at(cfg, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        set_skip_scale(model, skip_scale_at(cfg, frac))
        loss, ctc, kd = train_step(model, opt, data, idx, rmat, cfg)
        step += 1
        run_loss += loss
        run_ctc += ctc
        run_kd += kd
        run_n += 1
        chunks_window += n
        if step % 50 == 0:
            log.info("step %d ep %d loss %.4f ctc %.4f kd %.4f lr %.2e skip %.2f %.1f chunk/s",
                     step, epoch, run_loss / run_n, run_ctc / run_n, run_kd / run_n,
                     lr, skip_scale_at(cfg, frac),
                     chunks_window / (time.time() - t_window))
        now = time.time()
        frac = progress(cfg, step, now - t_start)
        done = frac >= 1.0
        if done or now - last_ckpt >= cfg.ckpt_minutes * 60:
            row = {"step": step, "epoch": epoch, "elapsed_s": round(now - t_start),
                   "lr": f"{lr:.3e}",
                   "skip_scale": round(skip_scale_at(cfg, frac), 3),
                   "train_loss": round(run_loss / max(run_n, 1), 4),
                   "train_ctc": round(run_ctc / max(run_n, 1), 4),
                   "train_kd": round(run_kd / max(run_n, 1), 4),
                   "chunks_per_s": round(chunks_window / (now - t_window), 2)}
            row.update(validate(model, val, vreads, aligner, cfg, rmat))
            log.info("checkpoint %s", row)
            with open(csv_path, "a", newline="") as fh:
                csv.writer(fh).writerow([row.get(k, "") for k in FIELDS])
            save_state(out / "last.pt", model, opt, step, epoch, pos, perm, cfg,
                       time.time() - t_start)
            best = out / "best.json"
            prev = json.loads(best.read_text())["val_median_identity"] if best.exists() else -1
            if row["val_median_identity"] > prev and row["skip_scale"] == 0:
                shutil.copy(out / "last.pt", out / "best.pt")
                best.write_text(json.dumps(row))
            run_loss = run_ctc = run_kd = 0.0
            run_n = chunks_window = 0
            t_window = last_ckpt = time.time()
            if cfg.commit and (done or time.time() - last_commit >= cfg.commit_minutes * 60):
                ckdir.mkdir(parents=True, exist_ok=True)
                files = [ckdir / "last.pt", ckdir / "log.csv", ckdir / "config.json"]
                shutil.copy(out / "last.pt", files[0])
                shutil.copy(csv_path, files[1])
                shutil.copy(out / "config.json", files[2])
                if (out / "best.pt").exists():
                    shutil.copy(out / "best.pt", ckdir / "best.pt")
                    shutil.copy(out / "best.json", ckdir / "best.json")
                    files += [ckdir / "best.pt", ckdir / "best.json"]
                git_commit(files, f"checkpoint {cfg.run}: step {step}, val median identity "
                                  f"{row['val_median_identity']}")
                last_commit = time.time()
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = sub.add_parser("train", help="train a student (CTC + KD), resumable")
    p.add_argument("--run", required=True, help="run name (checkpoint folder name)")
    p.add_argument("--data", type=Path, default=cache_dir() / "r941",
                   help="folder with train.npz, val.npz, val_reads.npz "
                        "(default $EDGECALL_CACHE/r941)")
    p.add_argument("--out", type=Path, default=None,
                   help="default $EDGECALL_CACHE/runs/<run> (~/.cache/edgecall without it)")
    p.add_argument("--resume", type=Path, default=None,
                   help="checkpoint to continue from (its config is reused)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start a new run from this checkpoint's weights (fine-tuning)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="schedule length in steps (ignored when --hours is set)")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--kernel", type=int, default=25)
    p.add_argument("--stem-kernel", type=int, default=15)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--no-skips", action="store_true")
    p.add_argument("--no-commit", action="store_true",
                   help="never copy/commit checkpoints into tools/checkpoints (tests)")
    for name, typ in [("batch-size", int), ("lr", float), ("kd-alpha", float),
                      ("kd-tau", float), ("skipclip-start", float), ("skipclip-end", float),
                      ("seed", int), ("ckpt-minutes", float), ("commit-minutes", float),
                      ("threads", int), ("hours", float)]:
        p.add_argument(f"--{name}", type=typ, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the config (or reuse the checkpoint's) and train."""
    overrides = {k: getattr(args, k.replace("-", "_")) for k in
                 ["batch_size", "lr", "kd_alpha", "kd_tau", "skipclip_start", "skipclip_end",
                  "seed", "ckpt_minutes", "commit_minutes", "threads", "max_steps",
                  "hours"]}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    loaded = None  # the --init-from file, read once
    if args.no_commit:
        overrides["commit"] = False
    if args.resume is not None:
        if not args.resume.exists():
            raise FileNotFoundError(f"{args.resume}: checkpoint not found")
        base = torch.load(args.resume, weights_only=False)["config"]
        base.update({k: str(v) for k, v in [("train", args.data / "train.npz"),
                                            ("val", args.data / "val.npz"),
                                            ("val_reads", args.data / "val_reads.npz")]})
        if args.out is not None:
            base["out"] = str(args.out)
        base.update(overrides)
        cfg = TrainConfig(**base)
    else:
        arch = ArchConfig(channels=args.channels, depth=args.depth, kernel=args.kernel,
                          stem_kernel=args.stem_kernel, stride=args.stride,
                          skips=not args.no_skips)
        if args.init_from is not None:
            # fine-tuning keeps the starting network's architecture; a skip-free start
            # (SkipClip finished, or a pruned student) stays skip-free
            loaded = torch.load(args.init_from, weights_only=False)
            init = student_from_checkpoint(loaded, args.init_from)
            arch = replace(init.cfg, skips=any(b.skip for b in init.blocks))
            log.info("architecture from %s (skips %s); --channels/--depth/... ignored",
                     args.init_from, arch.skips)
            overrides["init_from"] = str(args.init_from)
        cfg = TrainConfig(run=args.run, train=str(args.data / "train.npz"),
                          val=str(args.data / "val.npz"),
                          val_reads=str(args.data / "val_reads.npz"),
                          out=str(args.out or cache_dir() / "runs" / args.run),
                          arch=arch.to_dict(), **overrides)
    log.info("command: %s", " ".join(sys.argv))
    train(cfg, args.resume, args.init_from, loaded)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.train ...`` (same options as ``python -m tools train``)."""
    parser = argparse.ArgumentParser(prog="python -m tools.train")
    sub = parser.add_subparsers(dest="step")
    register(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
