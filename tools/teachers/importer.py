"""``tools import-model``: a dorado/bonito model folder -> an edgecall model folder.

::

    python -m tools import-model DIR --out models/NAME [--calibrate POD5 ...] [--int8]

Reads ``DIR/config.toml`` and the weights (dorado ``*.tensor`` files or a bonito
``weights_N.tar``), builds the torch network (:mod:`.dorado` for ``bonito.crf``,
:mod:`.bonito_ctc` for ``bonito.ctc``), exports ONNX (input ``signal`` [N, 1, T],
dynamic N and T, opset 17, LSTMs as ONNX LSTM ops), checks onnxruntime against
torch on real chunks (``--calibrate``) or a random one, optionally writes a
dynamically quantised INT8 graph (kept only when it is faster and its calls agree
with the FP32 calls to >= 99 %), and writes ``card.toml``. Third-party weights end up
in the output folder: import into a folder you do not commit.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecall.errors import InputError, ModelError
from edgecall.models import FLOW_CELLS, sha256_file, write_card_toml

from .bonito_ctc import build_ctc_model
from .crfcheck import greedy_ctc, viterbi
from .dorado import build_crf_model
from .torchfile import load_state_dict, load_tensor_folder

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_TOL = 1e-3
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_IDENTITY_LOSS = 0.01
_PORE = re.compile(r"(?:^|[^0-9a-z])(r9\.4\.1|r10\.4\.1|r10\.4)(?:[^0-9]|$)", re.IGNORECASE)


@dataclass
class Imported:
    """A built network and what the card needs to know about it."""

    folder: Path
    model: nn.Module
    package: str
    decoder: str  # "crf" or "ctc"
    config: dict[str, Any]
    config_sha256: str
    alphabet: str = "NACGT"
    state_len: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def stride(self) -> int:
        """Samples per output frame."""
        return int(self.model.stride)  # type: ignore[arg-type]


def load_model_folder(folder: str | Path) -> Imported:
    """Build the torch network of a dorado/bonito model folder (errors: :class:`ModelError`)."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{d}: no such model folder")
    cfg_path = d / "config.toml"
    if not cfg_path.is_file():
        raise ModelError(f"{d}: no config.toml (not a dorado/bonito model folder)")
    raw = cfg_path.read_bytes()
    try:
        cfg = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{cfg_path}: not valid TOML ({exc})") from None
    package = str(cfg.get("model", {}).get("package", ""))
    if package not in ("bonito.crf", "bonito.ctc"):
        what = "a remora modified-base model" if "modbases" in cfg else "no [model] package"
        raise ModelError(f"{d}: not a dorado/bonito basecaller ({what}; "
                         "expected package bonito.crf or bonito.ctc)")
    dorado, tensors = _read_weights(d)
    sha = hashlib.sha256(raw).hexdigest()
    if package == "bonito.crf":
        net = build_crf_model(cfg, tensors, dorado=dorado, where=str(d))
        return Imported(d, net, package, "crf", cfg, sha, net.alphabet, net.state_len)
    net_ctc = build_ctc_model(tensors, cfg, where=str(d))
    alphabet = "".join(cfg.get("labels", {}).get("labels", list("NACGT")))
    return Imported(d, net_ctc, package, "ctc", cfg, sha, alphabet)


def _read_weights(d: Path) -> tuple[bool, dict[str, np.ndarray]]:
    """(dorado naming?, tensors): ``*.tensor`` files, else the newest ``weights_N.tar``."""
    if any(d.glob("*.tensor")):
        return True, load_tensor_folder(d)
    tars = sorted(d.glob("weights_*.tar"),
                  key=lambda p: int(m.group(1)) if (m := re.search(r"_(\d+)\.tar$", p.name))
                  else -1)
    if not tars:
        raise ModelError(f"{d}: no weights (*.tensor files or weights_N.tar)")
    return False, load_state_dict(tars[-1])


# --------------------------------------------------------------------------- card fields

def pore_of(folder: Path, override: str | None = None) -> str:
    """Pore chemistry from ``--pore``, the folder's name (dna_r10.4.1_...) or its path."""
    if override:
        return override
    for text in (folder.name, str(folder.resolve())):
        m = _PORE.search(text)
        if m:
            return m.group(1).lower()
    raise ModelError(f"{folder}: cannot tell the pore from the folder name; pass --pore")


def sample_rate_of(cfg: dict[str, Any], folder: Path, pore: str) -> int:
    """``[run_info] sample_rate``, else ONT's rate for the model generation (4 or 5 kHz)."""
    rate = cfg.get("run_info", {}).get("sample_rate")
    if rate:
        return int(rate)
    m = re.search(r"@v(\d+)\.(\d+)", folder.name)
    if pore.startswith("r10") and m and (int(m.group(1)), int(m.group(2))) >= (4, 2):
        return 5000
    return 4000


def normalisation_of(cfg: dict[str, Any], package: str, force: str | None = None
                     ) -> dict[str, Any]:
    """The card's ``[normalisation]`` from ``[scaling]``/``[standardisation]``."""
    if force:
        return {"method": force, "clip": 0.0}
    strategy = cfg.get("scaling", {}).get("strategy")
    std = cfg.get("standardisation", {})
    if strategy is None:
        enc = cfg.get("encoder", {})
        legacy = package == "bonito.ctc" or ("sublayers" not in enc and "features" in enc)
        if not legacy:
            strategy = "quantile"  # dorado's default for v4+ configs without [scaling]
        elif not std.get("standardise"):
            return {"method": "median_mad", "clip": 0.0}
        else:
            raise ModelError("config: [standardisation] on top of median/MAD scaling is not "
                             "an edgecall normalisation")
    if strategy in ("med_mad", "median_mad"):
        return {"method": "median_mad", "clip": 0.0}
    if strategy == "pa":
        if std.get("standardise"):
            return {"method": "fixed", "shift": float(std["mean"]),
                    "scale": float(std["stdev"]), "clip": 0.0}
        return {"method": "fixed", "shift": 0.0, "scale": 1.0, "clip": 0.0}
    raise ModelError(f"config: scaling strategy {strategy!r} has no edgecall normalisation "
                     "(edgecall has median_mad and fixed pA); pass --norm median_mad to accept "
                     "median/MAD as an approximation")


def card_dict(imp: Imported, name: str, *, pore: str, rate: int, norm: dict[str, Any],
              files: dict[str, str], variants: dict[str, str]) -> dict[str, Any]:
    """The ``card.toml`` contents for an imported model."""
    cfg = imp.config
    basecaller = cfg.get("basecaller", {})
    if imp.decoder == "crf":
        chunk = int(basecaller.get("chunksize", 10000))  # dorado's defaults when absent
        overlap = int(basecaller.get("overlap", 500))
    else:
        chunk, overlap = 4000, 500
    # the device chunks only at multiples of the stride (edgecall.signal.chunk_starts)
    chunk = max(imp.stride, chunk // imp.stride * imp.stride)
    overlap = min(round(overlap / imp.stride) * imp.stride, chunk - imp.stride)
    model: dict[str, Any] = {"file": "model.onnx", "alphabet": imp.alphabet,
                             "stride": imp.stride, "chunk_size": chunk, "overlap": overlap}
    if imp.decoder == "crf":
        q = cfg.get("qscore", {})
        model |= {"output": "crf_scores", "decoder": "crf",
                  "crf": {"state_len": imp.state_len, "qscore_scale": float(q.get("scale", 1.0)),
                          "qscore_bias": float(q.get("bias", 0.0))}}
    else:
        model["output"] = "log_softmax"
    if variants:
        model["variants"] = variants
    net = imp.model
    return {
        "name": name, "description": f"imported from {imp.folder.name} ({imp.package})",
        "default": False,
        "chemistry": {"pore": pore, "flow_cells": list(FLOW_CELLS.get(pore, ())), "kits": [],
                      "sample_rate": rate, "accepted_sample_rates": [rate],
                      "measured_sample_rates": []},
        "model": model,
        "normalisation": norm,
        "architecture": {"package": imp.package,
                         "params": int(sum(p.numel() for p in net.parameters())),
                         "macs_per_sample": round(float(net.macs_per_sample()), 1),  # type: ignore[operator]
                         "layers": net.summary()},  # type: ignore[operator]
        "files": files,
        "import": {"source": imp.folder.name, "config_sha256": imp.config_sha256},
    }


# --------------------------------------------------------------------------- export

def export_onnx(model: nn.Module, path: str | Path, *, length: int = 2400,
                output: str = "scores") -> Path:
    """Export ``model`` (input ``signal`` [N, 1, T], dynamic N and T, opset 17) to ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    stride = int(getattr(model, "stride", 1))
    x = torch.zeros(1, 1, max(stride, length // stride * stride))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(p), input_names=["signal"],
                          output_names=[output], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"signal": {0: "batch", 2: "samples"},
                                        output: {0: "batch", 1: "frames"}})
    return p


def ort_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(session: Any, chunks: list[np.ndarray]) -> list[np.ndarray]:
    """Run chunks (1-D, any lengths) one at a time -> ``[T', C]`` each."""
    name = session.get_inputs()[0].name
    return [session.run(None, {name: np.asarray(c, np.float32)[None, None]})[0][0]
            for c in chunks]


def torch_run(model: nn.Module, chunks: list[np.ndarray]) -> list[np.ndarray]:
    """The torch model on each chunk -> ``[T', C]`` each."""
    with torch.no_grad():
        return [model(torch.from_numpy(np.asarray(c, np.float32))[None, None])[0].numpy()
                for c in chunks]


def check_export(model: nn.Module, path: Path, chunks: list[np.ndarray],
                 tol: float = EXPORT_TOL) -> float:
    """Max abs difference onnxruntime vs torch; :class:`ModelError` above ``tol``."""
    pairs = zip(ort_run(ort_session(path), chunks), torch_run(model, chunks), strict=True)
    diff = max(float(np.abs(a - b).max()) for a, b in pairs)
    if not diff < tol:
        raise ModelError(f"{path}: onnxruntime differs from torch by {diff:.2e} (> {tol:g})")
    return diff


def samples_per_second(path: Path, chunks: list[np.ndarray], threads: int = 1) -> float:
    """onnxruntime throughput on ``chunks`` (one warm-up run, then all of them)."""
    sess = ort_session(path, threads)
    ort_run(sess, chunks[:1])
    t0 = time.perf_counter()
    ort_run(sess, chunks)
    return sum(c.size for c in chunks) / (time.perf_counter() - t0)


def calls(imp: Imported, outputs: list[np.ndarray]) -> list[str]:
    """Best-path calls of each chunk's network output."""
    if imp.decoder == "crf":
        return [viterbi(o, imp.state_len, imp.alphabet[1:]) for o in outputs]
    return [greedy_ctc(o, imp.alphabet) for o in outputs]


def agreement(ref_calls: list[str], calls_: list[str]) -> float:
    """Median identity of each call aligned (mappy) to the reference call of its chunk."""
    import mappy

    ids = []
    for ref, seq in zip(ref_calls, calls_, strict=True):
        if ref == seq:
            ids.append(1.0)
            continue
        hits = [h for h in mappy.Aligner(seq=ref, preset="map-ont").map(seq) if h.is_primary]
        ids.append(1.0 - hits[0].NM / max(hits[0].blen, 1) if hits else 0.0)
    return float(np.median(ids)) if ids else 0.0


def quantise_int8(fp32: Path, out: Path) -> Path:
    """onnxruntime dynamic quantisation (per-channel int8 weights; LSTM, MatMul, Conv)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return out


def median_identity(aligner: Any, seqs: list[str]) -> float:
    """Median identity (1 - NM / block length, unmapped = 0) of calls against a reference."""
    ids = []
    for seq in seqs:
        hit = next((h for h in aligner.map(seq) if h.is_primary), None) if seq else None
        ids.append(1.0 - hit.NM / max(hit.blen, 1) if hit else 0.0)
    return float(np.median(ids)) if ids else 0.0


@dataclass
class ImportReport:
    """What ``import-model`` measured."""

    folder: Path
    max_abs_diff: float
    fp32_samples_per_s: float
    int8_samples_per_s: float | None = None
    int8_agreement: float | None = None
    fp32_identity: float | None = None
    int8_identity: float | None = None
    int8_kept: bool = False


def try_int8(imp: Imported, out: Path, chunks: list[np.ndarray], fp32_sps: float,
             report: ImportReport, aligner: Any = None) -> dict[str, str]:
    """Quantise; keep ``model.int8.onnx`` only when faster and as accurate (returns variants).

    With ``aligner`` (a mappy index of the reads' reference) "as accurate" is a median
    identity loss under 1 pp; without, the INT8 calls must agree with the FP32 calls
    to >= 99 % (a stricter, reference-free bound).
    """
    path = quantise_int8(out / "model.onnx", out / "model.int8.onnx")
    try:
        sps = samples_per_second(path, chunks)
        fp_calls = calls(imp, ort_run(ort_session(out / "model.onnx"), chunks))
        q_calls = calls(imp, ort_run(ort_session(path), chunks))
    except Exception as exc:  # noqa: BLE001 - an unrunnable int8 graph is dropped, said so
        log.warning("int8 graph does not run (%s: %s); dropped", type(exc).__name__, exc)
        path.unlink()
        return {}
    report.int8_samples_per_s, report.int8_agreement = sps, agreement(fp_calls, q_calls)
    if aligner is not None:
        report.fp32_identity = median_identity(aligner, fp_calls)
        report.int8_identity = median_identity(aligner, q_calls)
        accurate = report.fp32_identity - report.int8_identity < INT8_MAX_IDENTITY_LOSS
    else:
        accurate = report.int8_agreement >= INT8_MIN_AGREEMENT
    if sps > fp32_sps and accurate:
        report.int8_kept = True
        return {"int8": path.name}
    log.info("int8 dropped: %.0f samples/s vs fp32 %.0f, calls agree %.4f, identity %s -> %s",
             sps, fp32_sps, report.int8_agreement, report.fp32_identity, report.int8_identity)
    path.unlink()
    return {}


def calibration_chunks(pod5s: list[Path], chunk: int, norm: dict[str, Any], n: int = 8,
                       ) -> list[np.ndarray]:
    """Up to ``n`` real chunks (normalised as the card says) from the first reads of ``pod5s``.

    A read shorter than ``chunk`` gives one shorter chunk (the whole read).
    """
    import pod5

    from edgecall.signal import Normalisation, normalise

    spec = Normalisation(**norm)
    out: list[np.ndarray] = []
    for path in pod5s:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such pod5 file")
        with pod5.Reader(path) as reader:
            for rec in reader.reads():
                pa = (rec.signal.astype(np.float32) + rec.calibration.offset) \
                    * rec.calibration.scale
                x = normalise(pa, spec)
                for s in range(0, max(1, len(x) - chunk + 1), chunk):
                    out.append(x[s:s + chunk])
                    if len(out) >= n:
                        return out
    if not out:
        raise InputError("the --calibrate files hold no reads")
    return out


def import_model(src: str | Path, out: str | Path, *, name: str | None = None,
                 calibrate: list[Path] | None = None, int8: bool = False,
                 reference: Path | None = None, n_chunks: int = 16, pore: str | None = None,
                 norm: str | None = None) -> ImportReport:
    """Import one model folder into ``out`` (ONNX, optional INT8, card.toml).

    Parameters
    ----------
    src
        dorado/bonito model folder (``config.toml`` + weights).
    out
        The edgecall model folder to write (created).
    calibrate
        pod5 files whose first reads give the real chunks for the export check,
        the speed measurement and the INT8 decision (random chunks without).
    int8
        Also write ``model.int8.onnx`` when it is faster and as accurate as FP32.
    reference
        FASTA of the ``calibrate`` reads: the INT8 decision then measures identity.
    n_chunks
        How many real chunks to take from ``calibrate``.
    pore, norm
        Overrides when the folder does not say (``--pore``, ``--norm median_mad``).
    """
    imp = load_model_folder(src)
    out_dir = Path(out)
    pore_ = pore_of(imp.folder, pore)
    rate = sample_rate_of(imp.config, imp.folder, pore_)
    norm_ = normalisation_of(imp.config, imp.package, norm)
    chunk = card_dict(imp, "x", pore=pore_, rate=rate, norm=norm_, files={},
                      variants={})["model"]["chunk_size"]
    if calibrate:
        chunks = calibration_chunks(list(calibrate), chunk, norm_, n_chunks)
    else:
        n = max(imp.stride, min(chunk, 3000) // imp.stride * imp.stride)
        chunks = list(np.random.default_rng(0).standard_normal((2, n)).astype(np.float32))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.int8.onnx").unlink(missing_ok=True)  # never list a stale variant
    onnx_path = export_onnx(imp.model, out_dir / "model.onnx",
                            output="scores" if imp.decoder == "crf" else "logprobs")
    report = ImportReport(imp.folder, check_export(imp.model, onnx_path, chunks),
                          samples_per_second(onnx_path, chunks))
    variants: dict[str, str] = {}
    if int8:
        aligner = _aligner(reference) if reference else None
        variants = try_int8(imp, out_dir, chunks, report.fp32_samples_per_s, report, aligner)
    files = {p.name: sha256_file(p) for p in sorted(out_dir.glob("*.onnx"))}
    card = card_dict(imp, name or out_dir.name, pore=pore_, rate=rate, norm=norm_,
                     files=files, variants=variants)
    card["import"] |= {"max_abs_diff_onnx_torch": float(f"{report.max_abs_diff:.3g}"),
                       "check_chunks": "real" if calibrate else "random",
                       "fp32_samples_per_s_1_thread": round(report.fp32_samples_per_s)}
    if report.int8_samples_per_s is not None:
        card["import"] |= {"int8_samples_per_s_1_thread": round(report.int8_samples_per_s),
                           "int8_call_agreement": round(float(report.int8_agreement or 0), 4),
                           "int8_kept": report.int8_kept}
    if report.int8_identity is not None:
        card["import"] |= {"fp32_median_identity": round(float(report.fp32_identity or 0), 4),
                           "int8_median_identity": round(report.int8_identity, 4)}
    write_card_toml(out_dir, card)
    return report


def _aligner(reference: Path) -> Any:
    """A mappy map-ont index of ``reference``."""
    import mappy

    if not Path(reference).is_file():
        raise InputError(f"{reference}: no such reference FASTA")
    aligner = mappy.Aligner(str(reference), preset="map-ont")
    if not aligner:
        raise InputError(f"{reference}: cannot build a mappy index")
    return aligner


# --------------------------------------------------------------------------- CLI

def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``import-model`` subcommand."""
    p = sub.add_parser("import-model", help="dorado/bonito model folder -> edgecall model folder")
    p.add_argument("folder", type=Path, help="model folder (config.toml + weights)")
    p.add_argument("--out", type=Path, required=True, help="output folder, e.g. models/NAME")
    p.add_argument("--name", default=None, help="card name (default: the output folder name)")
    p.add_argument("--calibrate", type=Path, nargs="*", default=[],
                   help="pod5 files: real chunks for the checks and the INT8 decision")
    p.add_argument("--int8", action="store_true", help="also try a dynamic INT8 graph")
    p.add_argument("--reference", type=Path, default=None,
                   help="FASTA of the --calibrate reads: decide INT8 by measured identity")
    p.add_argument("--chunks", type=int, default=16, help="real chunks to check on")
    p.add_argument("--pore", choices=sorted(FLOW_CELLS), default=None,
                   help="pore chemistry when the folder name does not say")
    p.add_argument("--norm", choices=["median_mad"], default=None,
                   help="use median/MAD normalisation whatever the config says")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Import and print what was measured."""
    rep = import_model(args.folder, args.out, name=args.name, calibrate=args.calibrate,
                       int8=args.int8, reference=args.reference, n_chunks=args.chunks,
                       pore=args.pore, norm=args.norm)
    print(f"{args.out}: onnx vs torch max abs diff {rep.max_abs_diff:.2e}; "
          f"fp32 {rep.fp32_samples_per_s:,.0f} samples/s (1 thread)")
    if rep.int8_samples_per_s is not None:
        ident = "" if rep.int8_identity is None else \
            f", median identity fp32 {rep.fp32_identity:.4f} int8 {rep.int8_identity:.4f}"
        print(f"int8 {rep.int8_samples_per_s:,.0f} samples/s, calls agree "
              f"{rep.int8_agreement:.4f} with fp32{ident}: "
              f"{'kept' if rep.int8_kept else 'dropped'}")
    return 0
