"""Export a trained student to ONNX and write its model card.

``python -m tools export CKPT models/<name> [--eval-json E.json ...]``:

* BatchNorm is folded into the preceding convolutions (stem, depthwise,
  pointwise), so the graph holds only Conv, Relu/Clip/Sigmoid*Mul, optional Add
  (residuals, only while a network still has them), Transpose and LogSoftmax.
* ONNX opset 17, input ``signal`` float32 ``[N, 1, T]`` (dynamic N and T, T a
  multiple of the stride), output ``logprobs`` ``[N, T/stride, 5]``.
* ``card.toml`` follows the schema in :mod:`edgecall.models`: chemistry, stride,
  chunking, normalisation, params, MACs/sample, sha256 of every file, accuracy
  from ``tools evaluate`` JSON files, onnxruntime samples/s and the training command.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from tools.arch import Student, count_params
from tools.compress import export_onnx, fold, student_from_checkpoint

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> tuple[Student, dict]:
    """Student (eval mode, skip scale restored, pruned widths kept) and the raw checkpoint."""
    st = torch.load(path, weights_only=False)
    return student_from_checkpoint(st, path).eval(), st


def check_export(path: Path, model: Student, data: list, chunk: int, pore: str) -> dict:
    """Hold the ONNX file to the PyTorch model on real (or random) chunks; log the numbers."""
    from tools.compress import check_fp32_export, load_chunks, onnx_vs_torch

    if data:
        chunks = load_chunks(data, chunk_size=chunk, max_chunks=16, pore=pore)
    else:
        chunks = np.random.default_rng(0).standard_normal((8, chunk)).astype(np.float32)
    stats = onnx_vs_torch(path, model, chunks)
    check_fp32_export(stats, str(path))
    log.info("%s vs torch on %d %s chunks: max |d logp| %.2g, decoded-sequence identity %.4f",
             path, len(chunks), "real" if data else "random", stats["max_abs"],
             stats["sequence_identity"])
    return stats


def ort_samples_per_s(path: Path, chunk: int, batch: int = 16, threads: int = 2,
                      repeats: int = 3) -> float:
    """onnxruntime throughput in input samples per second on this machine."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 1, chunk)).astype(np.float32)
    sess.run(None, {"signal": x})
    t0 = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, {"signal": x})
    return batch * chunk * repeats / (time.perf_counter() - t0)


def training_command(config: dict, depth: int = 0) -> str:
    """The command line that trained a checkpoint, rebuilt from its saved config.

    A run started ``--init-from`` another file is prefixed with what made that file:
    the pruning command recorded in a ``tools prune`` output, or (recursively, a few
    levels) the training command of an earlier ``tools train`` checkpoint.
    """
    cmd = "python -m tools.train " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in config.items()
        if k in ("run", "init_from", "lr", "batch_size", "hours", "max_steps", "kd_alpha",
                 "kd_tau", "seed") and v not in ("", None) and not (k == "hours" and not v)
        and not (k == "seed" and v == 1))  # 1: tools.train's default
    init = Path(config.get("init_from") or "")
    if init.is_file() and depth < 4:
        meta = torch.load(init, map_location="cpu", weights_only=False)
        if isinstance(meta, dict) and "method" in meta and "parent" in meta:
            amounts = " ".join(str(a) for a in np.atleast_1d(meta.get("amount", [])))
            cmd = (f"python -m tools prune {meta['parent']} --method {meta['method']} "
                   f"--amount {amounts} --steps {meta.get('steps', 0)} --out {init} && {cmd}")
        elif isinstance(meta, dict) and isinstance(meta.get("config"), dict):
            cmd = f"{training_command(meta['config'], depth + 1)} && {cmd}"
    return cmd


def training_record(ckpt: dict, teacher: str, command: str = "") -> dict:
    """The card's ``[training]`` table for a ``tools train`` checkpoint (export cards and
    defaults made from a trained student by ``tools report --apply``)."""
    return {"command": command or training_command(ckpt.get("config", {})),
            "step": int(ckpt.get("step", 0)),
            "trained_seconds": round(float(ckpt.get("elapsed", 0.0))), "teacher": teacher}


def block_widths(model: Student) -> list[int]:
    """Output channels of every block (per-layer after structured pruning)."""
    return [int(b.pw.out_channels) for b in model.blocks]


def write_card(folder: Path, name: str, model: Student, ckpt: dict, evals: list[dict],
               samples_per_s: float, chunk: int, overlap: int, description: str,
               default: bool, command: str, pore: str = "r9.4.1",
               measured_rates: tuple[int, ...] = (4000,), teacher: str = "") -> Path:
    """Write ``card.toml`` for an exported model folder (4 kHz student, ``pore`` chemistry)."""
    from edgecall.models import FLOW_CELLS, sha256_file, write_card_toml
    from tools.compress import macs_per_sample as macs_of

    cfg = model.cfg
    widths = block_widths(model)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
             if p.is_file() and p.name != "card.toml"}
    accuracy = {}
    for ev in evals:
        key = ev.get("dataset") or Path(ev["data"][0]).parent.name
        accuracy[key] = {k: ev[k] for k in ("median_identity", "mean_identity", "reads",
                                             "mapped", "bases") if k in ev}
        accuracy[key]["data"] = ev["data"]
        accuracy[key]["reference"] = ev.get("reference", "")
    card = {
        "name": name, "description": description, "default": default,
        "chemistry": {"pore": pore, "flow_cells": list(FLOW_CELLS[pore]),
                      "kits": [], "sample_rate": 4000,
                      "accepted_sample_rates": [4000, 5000],
                      "measured_sample_rates": sorted(set(measured_rates))},
        "model": {"file": "model.onnx", "alphabet": "NACGT", "stride": cfg.stride,
                  "chunk_size": chunk, "overlap": overlap, "output": "log_softmax"},
        "normalisation": {"method": "median_mad", "clip": 0.0},
        "architecture": {**{k: v for k, v in cfg.to_dict().items() if k != "skips"},
                         **({"channels": max(widths), "block_channels": widths}
                            if widths != [cfg.channels] * cfg.depth else {}),
                         "skips": bool(cfg.skips and ckpt.get("skip_scale", 1.0) > 0),
                         "params": count_params(model),
                         "macs_per_sample": round(macs_of(model, cfg.stride), 1),
                         "onnxruntime_samples_per_s": round(samples_per_s),
                         "onnxruntime_threads": 2},
        "files": files,
        "accuracy": accuracy,
        "training": training_record(ckpt, teacher or (
            "deepnano-blitz rnn96 (KD + labels)" if pore == "r9.4.1"
            else "none (CTC on labels)"), command),
    }
    return write_card_toml(folder, card)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = sub.add_parser("export", help="checkpoint -> models/<name>/ (ONNX + card.toml)")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("folder", type=Path, help="model folder, e.g. models/r941_dsc_v1")
    p.add_argument("--name", default=None)
    p.add_argument("--chunk", type=int, default=4000)
    p.add_argument("--overlap", type=int, default=400)
    p.add_argument("--eval-json", type=Path, nargs="*", default=[],
                   help="tools evaluate JSON files to record as accuracy")
    p.add_argument("--description", default="")
    p.add_argument("--default", action="store_true")
    p.add_argument("--command", default="", help="the training command for the card")
    p.add_argument("--pore", default="r9.4.1", choices=["r9.4.1", "r10.4.1"],
                   help="chemistry the model was trained for")
    p.add_argument("--measured-rates", type=int, nargs="*", default=[4000],
                   help="sample rates the card's accuracy numbers were measured at")
    p.add_argument("--teacher", default="", help="what supervised the training (card text)")
    p.add_argument("--check-data", nargs="*", default=[], metavar="POD5",
                   help="real reads to check the export on (default: random signal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export the ONNX graph and write the card."""
    torch.set_num_threads(1)
    model, st = load_checkpoint(args.checkpoint)
    stride = model.cfg.stride
    if args.chunk % stride or args.overlap % stride:
        raise ValueError(f"chunk {args.chunk} and overlap {args.overlap} must be multiples "
                         f"of the stride {stride}")
    onnx_path = export_onnx(fold(model), args.folder / "model.onnx", length=args.chunk)
    check_export(onnx_path, model, args.check_data, args.chunk, args.pore)
    sps = ort_samples_per_s(onnx_path, args.chunk)
    evals = [json.loads(p.read_text()) for p in args.eval_json]
    command = args.command or training_command(st["config"])
    write_card(args.folder, args.name or args.folder.name, model, st, evals, sps, args.chunk,
               args.overlap, args.description, args.default, command, pore=args.pore,
               measured_rates=tuple(args.measured_rates), teacher=args.teacher)
    log.info("exported %s (%.0f samples/s onnxruntime)", args.folder, sps)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.export ...``."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m tools.export")
    sub = parser.add_subparsers(dest="step")
    register(sub)
    args = parser.parse_args(["export", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
