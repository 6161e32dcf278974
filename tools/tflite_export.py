"""``tools tflite-export``: FP32 and full-integer INT8 TFLite models via litert-torch.

The BatchNorm-folded student (:class:`tools.compress.FoldedNet`) is converted
with ``litert_torch.convert`` at a fixed input shape ``[batch, 1, length]``
(the converter bakes shapes into its reshapes; the edgecall TFLite engine pads
or splits batches, see :mod:`edgecall.engines.tflite`). INT8 is full-integer:
PT2E static quantisation (per-channel symmetric int8 weights, int8
activations, int8 graph input) calibrated on real chunks; only the final
log-softmax runs in float.

litert-torch (extra ``tflite-export``) pulls in jax and transformers; to keep a
workstation environment clean it may live in its own virtualenv (made with
``--system-site-packages`` so it shares torch): set ``EDGECALL_LITERT_PYTHON``
to that interpreter and :func:`export_tflite` runs the conversion there in a
subprocess.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecall.errors import ModelError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def have_litert_torch() -> bool:
    """True if litert-torch imports in this interpreter."""
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


def export_tflite(model: nn.Module, out: str | Path, *, batch: int = 16, length: int = 1200,
                  int8: bool = False, chunks: np.ndarray | None = None) -> Path:
    """Convert a folded student to TFLite.

    Parameters
    ----------
    model : nn.Module
        A :class:`tools.compress.FoldedNet` (or any module with the same contract).
    out : path
        The ``.tflite`` file to write.
    batch, length : int
        The fixed input shape ``[batch, 1, length]`` (``length`` a multiple of the stride).
    int8 : bool
        Full-integer quantisation (needs ``chunks``).
    chunks : ndarray, optional
        ``[M, length]`` normalised real chunks for INT8 calibration.

    Returns
    -------
    Path
        The written file.
    """
    dst = Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if int8 and (chunks is None or len(chunks) == 0):
        raise ValueError("full-integer TFLite needs calibration chunks (--data)")
    if have_litert_torch():
        path = _convert(model.eval(), dst, batch, length, int8, chunks)
    else:
        python = os.environ.get("EDGECALL_LITERT_PYTHON")
        if not python:
            raise ModelError("TFLite export needs litert-torch (pip install "
                             "'edgecall[tflite-export]') or EDGECALL_LITERT_PYTHON pointing at "
                             "a Python that has it")
        path = _convert_elsewhere(python, model, dst, batch, length, int8, chunks)
    real = chunks is not None and len(chunks) >= batch
    if real or not int8:  # FP32 must reproduce the PyTorch model; INT8 is measured, not held
        probe = chunks[:batch, :length] if real else \
            np.random.default_rng(0).standard_normal((batch, length)).astype(np.float32)
        with torch.no_grad():
            ref = model.eval()(torch.from_numpy(np.ascontiguousarray(probe[:, None, :]))).numpy()
        stats = check_tflite(path, ref, probe)
        if not int8:
            from tools.compress import check_fp32_export

            check_fp32_export(stats, str(path))
        log.info("%s: %s [%d,1,%d]; vs torch on %d %s chunks: max |d logp| %.4g, frame "
                 "agreement %.4f, decoded-sequence identity %.4f", path,
                 "int8" if int8 else "fp32", batch, length, len(probe),
                 "real" if real else "random", stats["max_abs"], stats["label_agreement"],
                 stats["sequence_identity"])
    return path


def _convert(model: nn.Module, dst: Path, batch: int, length: int, int8: bool,
             chunks: np.ndarray | None) -> Path:
    """Run litert-torch in this process."""
    import litert_torch

    x = torch.zeros(batch, 1, length)
    if not int8:
        litert_torch.convert(model, (x,)).export(str(dst))
        return dst
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = torch.export.export(model, (x,)).module()
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    assert chunks is not None
    with torch.no_grad():
        for i in range(0, len(chunks), batch):
            piece = chunks[i:i + batch, :length]
            if len(piece) < batch:
                piece = np.concatenate([piece, chunks[: batch - len(piece), :length]])
            prepared(torch.from_numpy(np.ascontiguousarray(piece[:, None, :])))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, (x,), quant_config=QuantConfig(pt2e_quantizer=quantizer)
                         ).export(str(dst))
    return dst


def _convert_elsewhere(python: str, model: nn.Module, dst: Path, batch: int, length: int,
                       int8: bool, chunks: np.ndarray | None) -> Path:
    """Run the conversion with another interpreter (``EDGECALL_LITERT_PYTHON``)."""
    with tempfile.TemporaryDirectory() as tmp:
        mpath, cpath = Path(tmp) / "model.pt", Path(tmp) / "chunks.npy"
        torch.save(model, mpath)
        np.save(cpath, chunks if chunks is not None else np.zeros((0, length), np.float32))
        cmd = [python, "-m", "tools.tflite_export", "--worker", str(mpath), str(cpath),
               str(dst), str(batch), str(length), "1" if int8 else "0"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if res.returncode != 0 or not dst.is_file():
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"TFLite conversion with {python} failed: {last}")
    return dst


def check_tflite(path: str | Path, reference: np.ndarray, chunks: np.ndarray, *,
                 threads: int = 1) -> dict[str, float]:
    """Run a TFLite model on ``chunks`` and compare with ``reference`` outputs."""
    from edgecall.engines.tflite import TFLiteEngine
    from tools.quantize import compare

    eng = TFLiteEngine(path, threads=threads)
    out = eng.run(np.ascontiguousarray(chunks[:, None, :]))
    return compare(reference, out)


# --------------------------------------------------------------------------- command line

def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tools tflite-export``."""
    p = sub.add_parser("tflite-export", help="FP32 / full-integer INT8 TFLite from a student",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="student checkpoint or pruned student .pt")
    p.add_argument("--out", type=Path, required=True, help=".tflite to write")
    p.add_argument("--int8", action="store_true", help="full-integer INT8")
    p.add_argument("--data", nargs="*", default=[],
                   help="real reads (pod5/npz): INT8 calibration and the export check")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=1200)
    p.add_argument("--max-chunks", type=int, default=256)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tools tflite-export``."""
    from tools.compress import fold, load_chunks, load_student

    student, _ = load_student(args.checkpoint)
    folded = fold(student)
    if args.int8 and not args.data:
        raise ValueError("--int8 needs real calibration chunks: give --data POD5|NPZ")
    chunks = load_chunks(args.data, chunk_size=args.chunk_size, max_chunks=args.max_chunks) \
        if args.data else None
    export_tflite(folded, args.out, batch=args.batch, length=args.chunk_size, int8=args.int8,
                  chunks=chunks)
    return 0


def _worker(argv: list[str]) -> int:
    """Subprocess entry: convert a pickled model (see :func:`_convert_elsewhere`)."""
    mpath, cpath, dst, batch, length, int8 = argv
    model = torch.load(mpath, map_location="cpu", weights_only=False)
    chunks = np.load(cpath)
    _convert(model.eval(), Path(dst), int(batch), int(length), int8 == "1",
             chunks if len(chunks) else None)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2:]))
    sys.exit("use: python -m tools tflite-export ...")
