"""edgecall's models beside their peers: accuracy, size and speed measured in one run.

Every contestant is measured by the same code on the same reads and machine, in one run:

* median identity (mappy ``map-ont``, ``1 - NM/blen``) on the E. coli validation reads
  (the 12 held out by read in ``tools data``) and on the 50 held-out SARS-CoV-2 amplicon
  reads of ``r9.4.1/corona`` (never trained on: ``tools data`` holds the same 50 out), with
  the number of reads that map;
* parameters and MACs per input sample (counted from the ONNX graph, LSTMs included);
* onnxruntime samples/s on a batch of real R9.4.1 chunks at 1 and 2 threads (round-robin
  over all contestants, best of ``--rounds`` passes of ``--seconds``);
* the Raspberry Pi 5 (4 cores) projection of ``bench/pi_projection.py`` from the 1-thread
  speed, and whether that keeps up with a full R9.4.1 MinION (512 channels x 4 kHz).

Contestants (``--models``): an edgecall model folder (its main file; ``folder:fp32`` for a
variant), ``teacher:rnn48`` (deepnano-blitz, our reimplementation: beam 5 for identity, its
ONNX export for speed), ``targetcall:TINYX011`` (a TargetCall peer loaded from its weights in
``r9.4.1/peers/targetcall`` and exported to ONNX; greedy CTC through the device pipeline), and
an imported dorado model folder (``tools import-model``; CRF decoding). Third-party weights
are exported to a temporary folder only, never into the project.

Usage (needs ``pip install .[tools]`` and ../shared/data)::

    python bench/peers.py --out bench/results/peers [--models ...] [--threads 1 2]

writes ``peers.md``, ``peers.json`` and ``peers.png`` (accuracy vs Pi 5 speed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
log = logging.getLogger("peers")

MINION_R941 = 512 * 4000  # a full R9.4.1 MinION: 512 channels x 4 kHz = 2.05 M samples/s
DEFAULT_MODELS = ["teacher:rnn48", "teacher:rnn64", "teacher:rnn96",
                  "targetcall:TINYX3", "targetcall:TINYX2", "targetcall:TINYX01",
                  "targetcall:TINYX011", "targetcall:TINYX0111"]


@dataclass
class Contestant:
    """One row of the table."""

    label: str
    kind: str  # edgecall | teacher | peer | imported
    eval_spec: str  # what tools.evaluate basecalls with
    onnx: Path | None
    variant: str = "main"
    identity: dict[str, dict] = field(default_factory=dict)
    params: int = 0
    macs: float = 0.0
    gemm: float = 0.0
    bytes: int = 0
    int8: bool = False
    sps: dict[int, float] = field(default_factory=dict)
    pi5: float = 0.0


def eval_sets(shared: Path, n_val: int = 12, n_corona: int = 50) -> dict[str, tuple]:
    """Evaluation sets: name -> (pod5, reference, read ids), held out as ``tools data`` does."""
    import pod5

    from tools.data import holdout_ids

    def ids(path: Path) -> list[str]:
        with pod5.Reader(path) as r:
            return [str(rec.read_id) for rec in r.reads()]

    r9 = shared / "r9.4.1"
    ecoli, corona = r9 / "ecoli" / "reads.pod5", r9 / "corona" / "reads.pod5"
    return {"ecoli_val": (ecoli, r9 / "ecoli" / "reference.fa.gz",
                          holdout_ids(ids(ecoli), n_val)),
            "corona_held": (corona, r9 / "corona" / "Corona_NC_045512.2.fasta",
                            holdout_ids(ids(corona), n_corona))}


def onnx_counts(path: Path) -> tuple[int, float, float]:
    """(parameters, MACs per input sample, GEMM share) of an ONNX graph, LSTMs included."""
    import onnx
    from onnx import numpy_helper
    from pi_projection import count_macs

    model = onnx.load(str(path))
    params = 0
    for init in model.graph.initializer:
        if "scale" in init.name or "zero_point" in init.name:
            continue
        params += int(np.prod(numpy_helper.to_array(init).shape))
    macs, stride, gemm = count_macs(path)
    gemm_macs = gemm * macs
    shapes = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    for node in model.graph.node:
        # recurrent layers (onnxruntime's dynamic INT8 kind too): W and R hold every MAC of a
        # frame ([dirs, gates*H, I] and [dirs, gates*H, H], transposed in the INT8 op)
        if node.op_type in ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"):
            w, r = shapes.get(node.input[1]), shapes.get(node.input[2])
            if w is not None and r is not None:
                m = (w[0] * w[1] * w[2] + r[0] * r[1] * r[2]) / stride
                macs += m
                gemm_macs += m
        elif node.op_type == "MatMulInteger":  # dynamic INT8 linear layer, weight [K, N]
            w = shapes.get(node.input[1])
            if w is not None:
                macs += w[0] * w[1] / stride
                gemm_macs += w[0] * w[1] / stride
    return params, macs, (gemm_macs / macs if macs else 0.0)


def _targetcall_folder(name: str, shared: Path, tmp: Path) -> Path:
    """Export a TargetCall peer to a temporary edgecall model folder (ONNX + card)."""
    from tools.teachers.importer import import_model

    out = tmp / f"targetcall_{name}"
    import_model(shared / "r9.4.1" / "peers" / "targetcall" / name, out)
    return out


def contestants(specs: list[str], shared: Path, tmp: Path) -> list[Contestant]:
    """Resolve ``--models`` specs into contestants (exporting third-party ONNX into tmp)."""
    from edgecall.models import load_card
    from tools.teacher import default_weights, export_onnx

    out = []
    for spec in specs:
        if spec.startswith("teacher:"):
            width = int(spec.split(":", 1)[1].removeprefix("rnn"))
            path = export_onnx(default_weights(width), tmp / f"rnn{width}.onnx")
            out.append(Contestant(f"deepnano-blitz rnn{width}", "teacher", spec, path))
            continue
        if spec.startswith("targetcall:"):
            name = spec.split(":", 1)[1]
            folder = _targetcall_folder(name, shared, tmp)
            out.append(Contestant(f"TargetCall {name}", "peer", str(folder),
                                  load_card(folder).onnx_path))
            continue
        folder, _, variant = spec.partition(":")
        card = load_card(Path(folder))
        variant = variant or "main"
        kind = "imported" if card.raw.get("import") else "edgecall"
        label = card.name if variant == "main" else f"{card.name}:{variant}"
        out.append(Contestant(label, kind, folder, card.variant_path(variant), variant,
                              int8=card.variant_path(variant).name.endswith("int8.onnx")))
    return out


def measure_identity(c: Contestant, sets: dict[str, tuple], threads: int) -> None:
    """Median identity and reads mapped of ``c`` on every evaluation set."""
    from tools.evaluate import evaluate

    for name, (pod5_path, ref, ids) in sets.items():
        res = evaluate(c.eval_spec, [pod5_path], ref, threads=threads, read_ids=set(ids),
                       dataset=name, variant=c.variant)
        c.identity[name] = {k: res[k] for k in ("reads", "mapped", "median_identity")}
        log.info("%s %s: %s", c.label, name, c.identity[name])


def measure_speed(cs: list[Contestant], threads: list[int], batch: int, chunk: int,
                  seconds: float, rounds: int) -> None:
    """onnxruntime samples/s of every contestant, round-robin, best of ``rounds``."""
    from teacher import real_chunks, session

    x = real_chunks(batch, chunk)
    for t in threads:
        sessions = [(c, session(c.onnx, t)) for c in cs if c.onnx is not None]
        for _ in range(rounds):
            for c, sess in sessions:
                sess.run(None, {"signal": x})
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    sess.run(None, {"signal": x})
                    n += 1
                c.sps[t] = max(c.sps.get(t, 0.0), n * x.size / (time.perf_counter() - t0))


def table(cs: list[Contestant], sets: list[str], threads: list[int]) -> list[str]:
    """Markdown table rows."""
    head = ("| model | kind | " + " | ".join(f"{s} identity (mapped)" for s in sets)
            + " | params | MACs/sample | KiB | "
            + " | ".join(f"ORT {t} thr samples/s" for t in threads)
            + " | Pi 5 4 thr (projected) | keeps up with a full R9.4.1 MinION |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cs:
        ids = [f"{c.identity[s]['median_identity']:.4f} ({c.identity[s]['mapped']}/"
               f"{c.identity[s]['reads']})" if s in c.identity else "n/a" for s in sets]
        sps = [f"{c.sps[t]:,.0f}" if t in c.sps else "n/a" for t in threads]
        lines.append(f"| {c.label}{' (INT8)' if c.int8 else ''} | {c.kind} | "
                     + " | ".join(ids) + f" | {c.params:,} | {c.macs:,.0f} | "
                     f"{c.bytes / 1024:,.0f} | " + " | ".join(sps)
                     + f" | {c.pi5 / 1e6:.2f} M | "
                     f"{'yes' if c.pi5 >= MINION_R941 else 'no'} ({c.pi5 / MINION_R941:.0%}) |")
    return lines


def plot(cs: list[Contestant], path: Path, eval_set: str) -> None:
    """Accuracy vs projected Pi 5 speed, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"edgecall": "tab:blue", "teacher": "tab:orange", "peer": "tab:green",
               "imported": "tab:red"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for kind, colour in colours.items():
        pts = [c for c in cs if c.kind == kind and eval_set in c.identity and c.pi5 > 0
               and c.identity[eval_set]["mapped"] > 0]
        ax.scatter([c.pi5 for c in pts], [c.identity[eval_set]["median_identity"] for c in pts],
                   c=colour, label=kind, s=40)
        for c in pts:
            ax.annotate(c.label + (" INT8" if c.int8 else ""),
                        (c.pi5, c.identity[eval_set]["median_identity"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.axvline(MINION_R941, color="grey", ls="--", lw=1)
    ax.text(MINION_R941, ax.get_ylim()[0], " full R9.4.1 MinION", fontsize=7, color="grey",
            va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("projected Raspberry Pi 5 samples/s (4 threads, onnxruntime)")
    ax.set_ylabel(f"median identity ({eval_set})")
    unmapped = [c.label for c in cs if c.identity.get(eval_set, {}).get("mapped", 1) == 0]
    if unmapped:
        ax.set_title(f"not shown (no read mapped): {', '.join(unmapped)}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Measure every contestant and write the table, JSON and plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None,
                    help="contestants (default: the deepnano-blitz and TargetCall peers and "
                         "every bundled model folder)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "peers")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=3600)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-reads", type=int, default=None,
                    help="only this many reads of each set (a quick look, not a result)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pi_projection import PI, project, sgemm_peak

    from tools.teacher import shared_data

    shared = shared_data()
    if not (shared / "r9.4.1" / "corona").is_dir():
        print(f"bench/peers.py: {shared}: shared data not found", file=sys.stderr)
        return 2
    specs = args.models
    if specs is None:
        specs = DEFAULT_MODELS + [str(p.parent) for p in sorted(
            (REPO / "models").glob("*/card.toml"))]
    sets = eval_sets(shared)
    if args.max_reads:
        sets = {k: (a, b, set(sorted(c)[:args.max_reads])) for k, (a, b, c) in sets.items()}
    with tempfile.TemporaryDirectory() as tmp:
        cs = contestants(specs, shared, Path(tmp))
        for c in cs:
            c.params, c.macs, c.gemm = onnx_counts(c.onnx)
            c.bytes = c.onnx.stat().st_size
            measure_identity(c, sets, max(args.threads))
        measure_speed(cs, args.threads, args.batch_size, args.chunk, args.seconds, args.rounds)
    peak = sgemm_peak()
    for c in cs:
        if 1 in c.sps:
            c.pi5 = project(c.sps[1], c.macs, c.gemm, peak, PI["Pi 5"], "onnx",
                            "int8" if c.int8 else "fp32", 4, 0.9)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = list(sets)
    lines = [f"# edgecall models and their peers (generated {stamp} by bench/peers.py)", "",
             f"One run on {platform.machine()} ({platform.processor() or 'cpu'}), onnxruntime, "
             f"batch {args.batch_size} x {args.chunk} samples of real R9.4.1 signal, best of "
             f"{args.rounds} x {args.seconds:.0f} s per thread count. Identity: median over "
             "reads of 1 - NM/blen (mappy map-ont); `ecoli_val` = the 12 E. coli reads held "
             "out by read, `corona_held` = the 50 SARS-CoV-2 reads `tools data` never trains "
             "on. Decoding: edgecall/TargetCall greedy CTC through the device pipeline, "
             "deepnano-blitz beam 5, imported CRF models Viterbi. Pi 5: projection from the "
             f"1-thread speed (bench/pi_projection.py; sgemm peak {peak / 1e9:.1f} GMAC/s), "
             f"full R9.4.1 MinION = {MINION_R941 / 1e6:.2f} M samples/s.", ""]
    lines += table(cs, names, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.md").write_text("\n".join(lines) + "\n")
    (args.out / "peers.json").write_text(json.dumps(
        {"generated": stamp, "threads": args.threads, "sgemm_peak": peak,
         "rows": [{**{k: v for k, v in vars(c).items() if k != "onnx"},
                   "sps": {str(k): round(v) for k, v in c.sps.items()}} for c in cs]},
        indent=1, default=str))
    plot(cs, args.out / "peers.png", "corona_held")
    print("\n".join(lines))
    return 0 if all(not math.isnan(c.pi5) for c in cs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
