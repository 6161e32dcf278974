"""``tools report``: build every compressed variant of a student and measure them in one run.

For one FP32 parent (a training checkpoint) the report makes the variants of
:mod:`tools.variants` (FP32; unstructured 50/70/85/90 %; structured 30/50 %;
delayed masking; PTQ MinMax/Percentile/Entropy and mixed precision; QAT;
prune/QAT orderings with one step budget per stage; TFLite FP32/INT8) and,
in the same process, measures for each model file:

* median identity on every evaluation set (the device pipeline,
  :class:`edgecall.pipeline.Basecaller`, greedy decoding, mappy ``map-ont``),
  and agreement of its basecalls with the FP32 parent's;
* file size (raw and gzip: unstructured zeros compress but do not shrink the
  dense file), parameters (dense and non-zero), conv MACs per sample;
* samples/s with every engine that can run the file (onnxruntime for ONNX,
  native for ONNX when it accepts the graph, LiteRT for TFLite), measured
  round-robin over all files at the same thread count, best of ``rounds``.

Outputs (``--out``): ``report.md`` (table + notes), ``report.json`` and
``pareto.png`` (identity vs samples/s, marker area ~ file size).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecall.errors import InputError, ModelError
from tools import cache_dir

log = logging.getLogger(__name__)

COLUMNS = ("variant", "technique", "precision", "format", "identity", "agreement", "size_kb",
           "gzip_kb", "params", "nonzero", "macs_per_sample", "onnx_sps", "native_sps",
           "tflite_sps")


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One measurable model file (a row of the table)."""

    variant: str
    technique: str
    precision: str  # fp32 | int8 | mixed
    path: Path
    params: int
    nonzero: int
    macs_per_sample: float
    parent: str = "fp32"


@dataclass(slots=True)
class Row:
    """Measurements of one :class:`ModelFile`."""

    variant: str
    technique: str
    precision: str
    format: str
    path: str
    size_kb: float
    gzip_kb: float
    params: int
    nonzero: int
    macs_per_sample: float
    identity: dict[str, float] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)  # "k/n" reads with a mappy hit
    agreement: float = float("nan")
    speed: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- measuring

def engines_for(path: Path) -> list[str]:
    """Engines that may run ``path`` (by format)."""
    return ["tflite"] if path.suffix == ".tflite" else ["onnx", "native"]


def make_engine(name: str, path: Path, threads: int) -> Any:
    """An engine instance for a model file (raises ModelError if it cannot run it)."""
    if name == "onnx":
        from edgecall.engines.onnx import OnnxEngine
        return OnnxEngine(path, threads=threads)
    if name == "tflite":
        from edgecall.engines.tflite import TFLiteEngine
        return TFLiteEngine(path, threads=threads)
    if name == "native":
        try:
            from edgecall.engines.native import NativeEngine
        except ImportError as exc:
            raise ModelError(f"native engine unavailable ({exc})") from None
        return NativeEngine(path, threads=threads)
    raise ModelError(f"unknown engine {name!r}")


def bench(engine: Any, batch: np.ndarray, seconds: float) -> float:
    """Samples per second of ``engine.run(batch)`` over about ``seconds`` (after warm-up)."""
    engine.run(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        engine.run(batch)
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds and n >= 2:
            return n * batch.shape[0] * batch.shape[2] / el


def file_sizes(path: Path) -> tuple[float, float]:
    """(size, gzip -6 size) in KiB."""
    raw = path.read_bytes()
    return len(raw) / 1024, len(gzip.compress(raw, 6)) / 1024


def basecalls(card: Any, engine: Any, reads: list[Any], batch_size: int) -> dict[str, str]:
    """Sequences of ``reads`` through the device pipeline with ``engine``."""
    from edgecall.pipeline import Basecaller
    from edgecall.types import CalledRead

    caller = Basecaller(card, engine, batch_size=batch_size)
    return {r.read_id: r.sequence for r in caller.call(reads) if isinstance(r, CalledRead)}


def agreement(calls: dict[str, str], parent: dict[str, str]) -> float:
    """Median identity of ``calls`` aligned to the parent's basecalls of the same reads."""
    import mappy

    vals = []
    for rid, seq in calls.items():
        ref = parent.get(rid, "")
        if len(ref) < 50 or not seq:
            continue
        if seq == ref:
            vals.append(1.0)
            continue
        al = mappy.Aligner(seq=ref, preset="map-ont")
        hit = next((h for h in al.map(seq) if h.is_primary), None)
        vals.append(1.0 - hit.NM / max(1, hit.blen) if hit else 0.0)
    return float(statistics.median(vals)) if vals else float("nan")


@dataclass(frozen=True, slots=True)
class EvalSet:
    """Reads of one evaluation set plus its mappy aligner."""

    name: str
    reads: list[Any]
    aligner: Any


def load_eval(spec: str, *, ids: set[str] | None, max_reads: int) -> EvalSet:
    """``NAME=POD5[:REFERENCE]`` -> an :class:`EvalSet` (reads in memory)."""
    from edgecall.io.reader import find_pod5, iter_reads
    from edgecall.types import Read
    from tools.evaluate import make_aligner

    if "=" not in spec:
        raise InputError(f"--eval {spec!r}: expected NAME=POD5[:REFERENCE]")
    name, rest = spec.split("=", 1)
    pod5, _, ref = rest.partition(":")
    if not ref:
        raise InputError(f"--eval {spec!r}: a reference FASTA is needed for identity")
    if not Path(ref).is_file():
        raise InputError(f"{ref}: no such reference")
    reads = [r for r in iter_reads(find_pod5([pod5]), read_ids=ids, max_reads=max_reads)
             if isinstance(r, Read)]
    if not reads:
        raise InputError(f"{pod5}: no reads for evaluation set {name}")
    return EvalSet(name, reads, make_aligner(Path(ref)))


def measure(files: list[ModelFile], card: Any, evals: list[EvalSet], bench_chunks: np.ndarray,
            *, threads: int, seconds: float, rounds: int, batch_size: int) -> list[Row]:
    """Measure every file: identity, agreement, size, and speed per engine (round-robin)."""
    from tools.evaluate import identity

    rows, parent_calls = [], {}
    for f in files:
        size, gz = file_sizes(f.path)
        row = Row(f.variant, f.technique, f.precision, f.path.suffix.lstrip("."), str(f.path),
                  round(size, 1), round(gz, 1), f.params, f.nonzero, round(f.macs_per_sample))
        first = engines_for(f.path)[0]
        engine = make_engine(first, f.path, threads)
        calls: dict[str, str] = {}
        for ev in evals:
            seqs = basecalls(card, engine, ev.reads, batch_size)
            ids = [identity(ev.aligner, s) for s in seqs.values()]
            vals = [v for v in ids if v is not None]
            row.identity[ev.name] = round(statistics.median(vals), 4) if vals else 0.0
            row.mapped[ev.name] = f"{len(vals)}/{len(ev.reads)}"
            calls.update(seqs)
        if f.variant == "fp32" and f.path.suffix == ".onnx":
            parent_calls = calls
        row.agreement = round(agreement(calls, parent_calls), 4) if parent_calls else 1.0
        log.info("%s %s: identity %s", f.variant, f.path.name, row.identity)
        rows.append(row)
    _speeds(files, rows, bench_chunks, threads=threads, seconds=seconds, rounds=rounds)
    return rows


def _speeds(files: list[ModelFile], rows: list[Row], chunks: np.ndarray, *, threads: int,
            seconds: float, rounds: int) -> None:
    """Fill ``row.speed[engine]`` with the best samples/s over ``rounds`` round-robin passes."""
    batch = np.ascontiguousarray(chunks[:, None, :])
    engines: dict[tuple[int, str], Any] = {}
    for i, f in enumerate(files):
        for name in engines_for(f.path):
            try:
                engines[(i, name)] = make_engine(name, f.path, threads)
            except Exception as exc:  # noqa: BLE001 - any refusal is reported per row
                rows[i].notes.append(f"{name}: {str(exc).splitlines()[0][:80]}")
    for _ in range(rounds):
        for (i, name), eng in list(engines.items()):
            try:
                sps = bench(eng, batch, seconds)
            except Exception as exc:  # noqa: BLE001 - an engine failing is a table note
                rows[i].notes.append(f"{name}: {str(exc).splitlines()[0][:80]}")
                del engines[(i, name)]
                continue
            rows[i].speed[name] = max(rows[i].speed.get(name, 0.0), round(sps))


# --------------------------------------------------------------------------- outputs

def _fmt(v: Any) -> str:
    """Table cell text."""
    if isinstance(v, float):
        return "-" if v != v else (f"{v:.4f}" if v < 2 else f"{v:,.0f}")
    return str(v)


def markdown(rows: list[Row], *, title: str, meta: dict[str, Any]) -> str:
    """The report as Markdown: a header, one table, and notes."""
    sets = sorted({k for r in rows for k in r.identity})
    head = ["variant", "technique", "precision", "format", *[f"identity {s}" for s in sets],
            *[f"mapped {s}" for s in sets],
            "agreement", "size KiB", "gzip KiB", "params", "non-zero", "MACs/sample",
            "onnx samples/s", "native samples/s", "tflite samples/s"]
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.variant, r.technique, r.precision, r.format,
                 *[_fmt(r.identity.get(s, float("nan"))) for s in sets],
                 *[r.mapped.get(s, "-") for s in sets], _fmt(r.agreement),
                 _fmt(r.size_kb), _fmt(r.gzip_kb), str(r.params), str(r.nonzero),
                 _fmt(float(r.macs_per_sample)),
                 *[_fmt(float(r.speed[e])) if e in r.speed else "-"
                   for e in ("onnx", "native", "tflite")]]
        lines.append("| " + " | ".join(cells) + " |")
    sets_sorted = sets or [""]
    found = findings(rows, sets_sorted[0])
    if found:
        lines += ["", f"Against the FP32 ONNX parent (identity on {sets_sorted[0]}):", *found]
    notes = [f"- {r.variant} ({r.format}): {n}" for r in rows for n in r.notes]
    if notes:
        lines += ["", "Engines that could not run a file:", *notes]
    return "\n".join(lines) + "\n"


def findings(rows: list[Row], eval_set: str) -> list[str]:
    """Plain-language ratios against the FP32 parent, engine by engine (size vs speed)."""
    parent = next((r for r in rows if r.variant == "fp32" and r.format == "onnx"), None)
    if parent is None:
        return []
    base = dict(parent.speed)
    tfl = next((r for r in rows if r.variant == "tflite_fp32"), None)
    if tfl is not None and "tflite" in tfl.speed:
        base["tflite"] = tfl.speed["tflite"]
    p_id = parent.identity.get(eval_set, float("nan"))
    out = []
    for r in rows:
        if r is parent:
            continue
        ratios = {e: v / base[e] for e, v in r.speed.items() if base.get(e)}
        speed = ", ".join(f"{e} {x:.2f}x" for e, x in ratios.items()) or "not measured"
        out.append(f"- {r.variant} ({r.format}): size {r.size_kb / parent.size_kb:.2f}x "
                   f"(gzip {r.gzip_kb / parent.gzip_kb:.2f}x) of the parent, samples/s vs the "
                   f"FP32 parent on the same engine: {speed}; identity "
                   f"{100 * (r.identity.get(eval_set, float('nan')) - p_id):+.2f} pp")
        if r.technique.startswith("unstructured") and ratios.get("onnx", 0.0) < 1.2:
            out[-1] += (" - size (gzipped) but no speed: the dense kernels do the same work "
                        "on the zeros")
    return out


def parse_markdown(text: str) -> list[dict[str, str]]:
    """Rows of the report table as dicts keyed by header (the inverse of :func:`markdown`)."""
    lines: list[str] = []
    for ln in text.splitlines():  # the first contiguous table only
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break
    if len(lines) < 2:
        raise ValueError("no Markdown table found")
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, [c.strip() for c in ln.strip("|").split("|")], strict=True))
            for ln in lines[2:]]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (speed up, identity up)."""
    front = []
    for i, (s, q) in enumerate(points):
        if not any((s2 >= s and q2 >= q) and (s2 > s or q2 > q)
                   for j, (s2, q2) in enumerate(points) if j != i):
            front.append(i)
    return front


def _place_labels(ax: Any, points: list[tuple[float, float, str, bool]]) -> None:
    """Annotate points, moving each label to the first of a few offsets where it does
    not overlap a label already placed (pixel boxes estimated from the font size)."""
    fig = ax.figure
    fig.canvas.draw()
    px = fig.dpi / 72.0
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(4, 3), (4, -10), (-4, 3), (-4, -10), (4, 12), (-4, 12), (4, -19), (-4, -19)]
    for x, y, text, strong in sorted(points, key=lambda p: not p[3]):  # strong labels first
        size = 7.5 if strong else 6.5
        w, h = 0.55 * size * len(text) * px, size * 1.2 * px
        cx, cy = ax.transData.transform((x, y))
        for dx, dy in offsets:
            x0 = cx + dx * px - (w if dx < 0 else 0)
            y0 = cy + dy * px
            box = (x0, y0, x0 + w, y0 + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                    fontsize=size, ha="right" if dx < 0 else "left",
                    color="black" if strong else "dimgrey",
                    fontweight="bold" if strong else "normal")


def plot(rows: list[Row], path: Path, *, eval_set: str, title: str,
         default: str | None = None, max_drop: float = 0.01) -> Path:
    """Pareto plot: identity vs best samples/s per row, marker area ~ file size.

    Colour = precision, square = TFLite; the dashed horizontal line is the parent's
    identity minus ``max_drop`` (the default's accuracy budget) and ``default`` is ringed.
    Labels of Pareto-front points, the parent and the default are bold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    pts = [(max(r.speed.values(), default=0.0), r.identity.get(eval_set, float("nan")))
           for r in rows]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    colours = {"fp32": "tab:blue", "int8": "tab:red", "mixed": "tab:purple"}
    unmapped = [f"{r.variant} ({r.format})" for r, (_, q) in zip(rows, pts, strict=True)
                if not q > 0]
    front_idx = {i for i in pareto_front(pts) if pts[i][1] > 0}
    labels = []
    for i, (r, (s, q)) in enumerate(zip(rows, pts, strict=True)):
        if not q > 0:
            continue
        ax.scatter(s, q, s=20 + r.size_kb / 2, alpha=0.6, c=colours.get(r.precision, "grey"),
                   marker="s" if r.format == "tflite" else "o")
        is_parent = r.variant == "fp32" and r.format == "onnx"
        if r.variant == default:
            ax.scatter(s, q, s=(20 + r.size_kb / 2) * 2.5, facecolors="none",
                       edgecolors="black", linewidths=1.5)
        name = r.variant if r.format == "onnx" or r.variant.startswith("tflite") \
            else f"{r.variant} ({r.format})"
        if r.variant == default:
            name += "  <- default"
        labels.append((s, q, name, i in front_idx or is_parent or r.variant == default))
    parent = next((q for r, (_, q) in zip(rows, pts, strict=True)
                   if r.variant == "fp32" and r.format == "onnx" and q > 0), None)
    if parent is not None:
        ax.axhline(parent - max_drop, color="tab:green", ls=":", lw=1)
        ax.text(ax.get_xlim()[1], parent - max_drop, f"parent - {max_drop * 100:.1f} pp ",
                color="tab:green", fontsize=7, ha="right", va="bottom")
    if unmapped:
        ax.text(0.99, 0.01, "no read mapped:\n" + "\n".join(unmapped), fontsize=6,
                transform=ax.transAxes, ha="right", va="bottom", alpha=0.7)
    front = sorted(pts[i] for i in front_idx)
    if front:
        ax.plot(*zip(*front, strict=True), "k--", lw=0.8)
    _place_labels(ax, labels)
    handles = [Line2D([], [], ls="", marker="o", color=c, alpha=0.6, label=p)
               for p, c in colours.items() if any(r.precision == p for r in rows)]
    handles += [Line2D([], [], ls="", marker="s", color="grey", alpha=0.6, label="TFLite"),
                Line2D([], [], ls="--", color="black", lw=0.8, label="Pareto front")]
    ax.legend(handles=handles, loc="center right", fontsize=8,
              title="marker area ~ file size", title_fontsize=7)
    ax.set_xlabel("samples/s (best engine, same threads)")
    ax.set_ylabel(f"median identity ({eval_set})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: the default rule: within MAX_DROP median identity of the FP32 parent; INT8 files within
#: SPEED_TIE of the fastest one's speed are a tie. DEFAULT_RULE says it in the report and card.
MAX_DROP, SPEED_TIE = 0.01, 0.03
DEFAULT_RULE = (f"the fastest INT8 model within {MAX_DROP * 100:.1f} pp median identity of its "
                f"FP32 parent, the most accurate of those within {SPEED_TIE * 100:.0f} % of "
                "its speed")


def choose_default(rows: list[Row], eval_set: str, *, max_drop: float = MAX_DROP,
                   min_parent: float = 0.5, speed_tie: float = SPEED_TIE) -> Row | None:
    """Fastest INT8 ONNX row within ``max_drop`` median identity of the FP32 ONNX parent.

    Rows within ``speed_tie`` (a fraction) of the fastest qualifying row's onnxruntime
    speed are a tie - the same graph shape measures that close from run to run - and
    the most accurate of them wins. None when no row qualifies or the parent itself
    is below ``min_parent`` identity (an untrained checkpoint makes every variant
    "within 1 pp").
    """
    parent = next((r for r in rows if r.variant == "fp32" and r.format == "onnx"), None)
    if parent is None or parent.identity.get(eval_set, 0.0) < min_parent:
        return None
    def frac(r: Row) -> float:
        k, _, n = r.mapped.get(eval_set, "1/1").partition("/")
        return int(k) / max(1, int(n or 1))

    ok = [r for r in rows if r.precision in ("int8", "mixed") and r.format == "onnx"
          and r.identity.get(eval_set, 0.0) >= parent.identity[eval_set] - max_drop
          and frac(r) >= frac(parent) - 0.1]  # and maps (nearly) as many reads
    if not ok:
        return None
    fastest = max(r.speed.get("onnx", 0.0) for r in ok)
    tied = [r for r in ok if r.speed.get("onnx", 0.0) >= fastest * (1 - speed_tie)]
    return max(tied, key=lambda r: (r.identity[eval_set], r.speed.get("onnx", 0.0)))


def sensitivity_markdown(sens: list[dict[str, Any]]) -> str:
    """The per-conv INT8 sensitivity as a Markdown section."""
    lines = ["", "Per-layer INT8 sensitivity of the parent (each conv quantised alone, "
             "KL of the posteriors from FP32 and frame agreement on held chunks):", "",
             "| conv | KL | frame agreement |", "|---|---|---|"]
    lines += [f"| {r['node']} | {r['kl']:.3g} | {r['label_agreement']:.4f} |" for r in sens]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], out: Path, *, title: str, meta: dict[str, Any],
                  eval_set: str, sensitivity: list[dict[str, Any]] | None = None,
                  default: str | None = None) -> dict[str, Path]:
    """Write report.md, report.json and pareto.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    text = markdown(rows, title=title, meta=meta)
    if sensitivity:
        text += sensitivity_markdown(sensitivity)
    md.write_text(text)
    js = out / "report.json"
    js.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows],
                              "sensitivity": sensitivity or []}, indent=1))
    png = plot(rows, out / "pareto.png", eval_set=eval_set, title=title, default=default)
    return {"markdown": md, "json": js, "plot": png}


# --------------------------------------------------------------------------- command line

def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tools report``."""
    p = sub.add_parser("report", help="build and measure every compressed variant",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="FP32 parent student checkpoint")
    p.add_argument("--card", type=Path, help="parent model folder (card.toml) for chemistry, "
                   "normalisation and chunking")
    p.add_argument("--data", nargs="+", required=True,
                   help="pod5/npz for calibration and distillation (not the eval reads)")
    p.add_argument("--eval", nargs="+", required=True, metavar="NAME=POD5:REF")
    p.add_argument("--eval-ids", type=Path, help="val_reads.npz: only these read ids")
    p.add_argument("--max-reads", type=int, default=24)
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps per stage")
    p.add_argument("--qat-steps", type=int, default=None,
                   help="quantisation-aware distillation steps (default: --steps)")
    p.add_argument("--lr", type=float, default=2e-3, help="distillation learning rate "
                   "(QAT uses a quarter)")
    p.add_argument("--variants", default="all", help="comma list or 'all' / 'quick'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="per speed measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--work", type=Path, default=cache_dir() / "compress" / "variants",
                   help="folder for the built variant files (default $EDGECALL_CACHE/...)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md/json/png")
    p.add_argument("--build-only", type=Path, metavar="JSON",
                   help="build the variants, write their list here, measure nothing")
    p.add_argument("--from-files", type=Path, nargs="+", metavar="JSON",
                   help="measure variants built by --build-only runs (in one run)")
    p.add_argument("--trained", nargs="+", default=[], metavar="LABEL=CKPT",
                   help="students trained elsewhere (e.g. a pruned student fine-tuned with "
                        "tools train --init-from): adds LABEL, LABEL>PTQ, tflite_int8_LABEL "
                        "(LABEL>QAT, distilled from the parent, and LABEL>QATr, QAT with "
                        "the student's own training recipe, on request in --variants)")
    p.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                   help="skip the per-conv INT8 sensitivity section")
    p.add_argument("--apply", action="store_true",
                   help="with --card: add the variants to the parent's card and make the "
                        "fastest INT8 model within 1.0 pp the default (<name>_int8)")
    p.set_defaults(func=run)


def parse_trained(specs: list[str]) -> dict[str, Path]:
    """``LABEL=CKPT`` pairs of ``--trained`` (checkpoints must exist)."""
    out: dict[str, Path] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise InputError(f"--trained {spec}: expected LABEL=CHECKPOINT")
        if not Path(path).is_file():
            raise InputError(f"--trained {spec}: {path}: no such checkpoint")
        out[label] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``tools report``."""
    import platform

    from tools.variants import (
        ACTIVATION,
        build_all,
        load_files,
        parent_card,
        real_chunks,
        save_files,
    )

    ids = None
    if args.eval_ids:
        if not args.eval_ids.is_file():
            raise InputError(f"{args.eval_ids}: no such read-id file")
        ids = {str(x) for x in np.load(args.eval_ids, allow_pickle=True)["read_id"]}
    evals = [load_eval(s, ids=ids, max_reads=args.max_reads) for s in args.eval]
    exclude = {r.read_id for ev in evals for r in ev.reads}
    card = parent_card(args.checkpoint, args.card)
    t0 = time.time()
    if args.from_files:
        files, build_s = load_files(args.from_files)
        chunks = real_chunks(card, args.data, exclude)
    else:
        files, chunks = build_all(args.checkpoint, card, args.data, work=args.work,
                                  steps=args.steps, qat_steps=args.qat_steps,
                                  which=args.variants, exclude=exclude,
                                  threads=args.threads, batch=args.batch_size, lr=args.lr,
                                  trained=parse_trained(args.trained))
        build_s = time.time() - t0
    if args.build_only:
        print(save_files(files, args.build_only, build_s))
        return 0
    sens = None
    fp32 = next(f.path for f in files if f.variant == "fp32" and f.path.suffix == ".onnx")
    if args.sensitivity:
        from tools.quantize import sensitivity

        held = chunks[32:48, :1200] if len(chunks) >= 40 else None
        sens = sensitivity(fp32, chunks[:32, :1200], eval_chunks=held, activation=ACTIVATION)
    rows = measure(files, card, evals, chunks[: args.batch_size], threads=args.threads,
                   seconds=args.seconds, rounds=args.rounds, batch_size=args.batch_size)
    best = choose_default(rows, evals[0].name)
    from tools.compress import load_student

    ck = load_student(args.checkpoint)[1]
    meta = {"parent": str(args.checkpoint), "checkpoint": (
        f"step {ck.get('step', '?')}, {float(ck.get('elapsed', 0)) / 60:.0f} min of training, "
        f"skip scale {ck.get('skip_scale', '?')}"), "card": card.name, "eval sets": ", ".join(
        f"{e.name} ({len(e.reads)} reads)" for e in evals), "threads": args.threads,
        "fine-tuning steps per stage": f"{args.steps} (batch {args.batch_size} x "
                                       f"1200 samples, AdamW lr {args.lr}, cosine)",
        "QAT steps": args.qat_steps or args.steps,
        "build time s (longest build process)": round(build_s),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "onnx int8 scheme": f"QDQ {'U8S8' if ACTIVATION == 'uint8' else 'S8S8'} (the fast "
                            "onnxruntime path on this CPU), per-channel symmetric 7-bit weights",
        "speed": f"[{args.batch_size},1,{card.chunk_size}] batches, best of {args.rounds} "
                 f"round-robin passes of {args.seconds}s",
        f"default candidate ({DEFAULT_RULE})": best.variant if best else "none qualifies"}
    title = f"Compression report: {card.name} from {args.checkpoint.name}"
    paths = write_outputs(rows, args.out, title=title, meta=meta, eval_set=evals[0].name,
                          sensitivity=sens, default=best.variant if best else None)
    print(paths["markdown"].read_text())
    if args.apply:
        print(apply(rows, best, args.card, report=str(paths["markdown"]),
                    eval_set=evals[0].name, threads=args.threads))
    return 0


def apply(rows: list[Row], best: Row | None, card_dir: Path | None, *, report: str,
          eval_set: str, threads: int = 1) -> str:
    """Update the parent's card and install the default INT8 model; returns a summary line."""
    from tools import cards

    if card_dir is None:
        raise ValueError("--apply needs --card (the parent model folder to update)")
    by = {(r.variant, r.format): r for r in rows}
    parent = by.get(("fp32", "onnx"))
    files = {k: Path(by[v].path) for k, v in (("int8", ("ptq_minmax", "onnx")),
                                               ("tflite", ("tflite_fp32", "tflite")),
                                               ("tflite_int8", ("tflite_int8", "tflite")))
             if v in by}
    summary = {"default_candidate": best.variant if best else "none"}
    cards.add_variants(card_dir, files, report=report, summary=summary)
    if best is None or parent is None:
        return (f"{card_dir}: variants added; no INT8 model within {MAX_DROP * 100:.1f} pp: "
                "default unchanged")
    extra = {}
    provenance: dict = {}
    pct = re.search(r"struct(?:ured)? (\d+)%", best.technique)
    base = re.fullmatch(r"(.+)>(?:PTQ|QATr?)", best.variant)
    if base and (base.group(1), "onnx") in by:  # a --trained student's INT8
        extra["fp32"] = Path(by[(base.group(1), "onnx")].path)
        sidecar = extra["fp32"].with_suffix(".train.json")
        if sidecar.is_file():  # its own training command, steps and per-block widths
            provenance = json.loads(sidecar.read_text())
        if (f"tflite_int8_{base.group(1)}", "tflite") in by:
            extra["tflite_int8"] = Path(by[(f"tflite_int8_{base.group(1)}", "tflite")].path)
    elif pct:  # the pruned FP32 model and its TFLite INT8 export travel with the default
        fp32 = Path(best.path).parent / f"structured{pct.group(1)}.onnx"
        if fp32.is_file():
            extra["fp32"] = fp32
        tfl = (f"tflite_int8_structured{pct.group(1)}", "tflite")
        if tfl in by:
            extra["tflite_int8"] = Path(by[tfl].path)
    name = f"{card_dir.name}_int8"
    cards.make_default(card_dir, Path(best.path), name=name, extra=extra, rows={
        "technique": best.technique, "params": best.params,
        "macs_per_sample": best.macs_per_sample, "identity": best.identity,
        "parent_identity": parent.identity.get(eval_set, 0.0),
        "onnx_sps": best.speed.get("onnx", 0.0),
        "parent_onnx_sps": parent.speed.get("onnx", 0.0), "report": report, "rule": DEFAULT_RULE,
        "threads": threads, **provenance})
    return f"default for {card_dir.name}'s chemistry is now {name} ({best.variant})"
