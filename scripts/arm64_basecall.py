"""Basecall the same reads on emulated arm64 and on x86 for every model and engine; compare.

Driven by ``scripts/arm64-check.sh`` after the arm64 venv and the x86 reference
venv exist. Both sides are installs of the *same* clean tree made the way the
README tells a user: ``python3 -m venv`` then ``pip install <tree>`` (runtime
dependencies from the index, no torch, nothing from the host's site-packages;
``ai-edge-litert`` added when it installs, for the tflite engine).

What runs (the matrix is read from each model's ``card.toml``):

* every bundled model folder (``models/*/card.toml`` of the tree), plus any
  ``--model``/``--extra-models`` folder (``EDGECALL_ARM64_EXTRA_MODELS`` in the
  shell script: e.g. an imported CRF model, which is not bundled);
* for a chemistry's default model (``default = true``): ``edgecall basecall``
  with no ``--model``/``--engine``/``--variant`` at all, on reads of that
  chemistry, i.e. exactly what a user runs; for the other models ``--engine
  auto`` with ``--model``;
* ``onnx`` and ``native`` with every ONNX file of the card (``--variant main``
  and each ONNX entry of ``[model.variants]``, e.g. ``fp32``/``int8``), and
  ``tflite`` with the card's ``.tflite`` files (``--variant fp32``/``int8``).

Pass rule per run, arm64 read for read against the x86 run of the same command:
onnxruntime fp32 identical sequences; every other run >= ``MIN_IDENTICAL`` of
bases identical (1 - edit distance / longer length, summed over reads). An int8
run also passes if it matches x86 *native* int8 of the same file, the
exact-integer reference (onnxruntime's x86 AVX2 u8s8 kernels saturate int16
intermediates; its arm64 sdot kernels do not). A run that fails on x86 and on
arm64 alike because the engine is not installed or does not support the model
(tflite without a runtime, native on a graph it cannot lower) is reported, not
failed; the default-model run, ``auto`` and ``onnx`` must always work.

Usage::

    python scripts/arm64_basecall.py --root ROOT --venv /root/venv --x86-src TREE \
        --x86-venv VENV --run-dir DIR --shared ../shared/data [--model DIR ...] \
        [--extra-models DIR ...] [--engines "default auto onnx native tflite"] [--out MD]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_IDENTICAL = 0.995
#: a few real reads per pore chemistry (relative to shared/data)
DEFAULT_READS = {
    "r9.4.1": "r9.4.1/ecoli/reads.pod5",
    "r10.4.1": "r10.4.1/dorado_tests/chr1_MAT.pod5",
    "r10.4": "r10.4.1/dorado_tests/multi_read_r10.4_q20ea.pod5",
}
GUEST_DATA = "/data"
ENGINES = ("default", "auto", "onnx", "native", "tflite")
#: tflite engine variant -> (card variant key, conventional file name); as edgecall.engines.tflite
TFLITE_FILES = {"fp32": ("tflite", "model.tflite"), "int8": ("tflite_int8", "model.int8.tflite")}
#: error text of an engine that is not installed / cannot run a model (x86 and arm64 alike)
NOT_AVAILABLE = ("needs ai-edge-litert", "UnsupportedGraph", "not supported", "unsupported")


@dataclass(frozen=True)
class Spec:
    """One basecall command of the matrix (the same on x86 and arm64)."""

    model: str        # model folder name
    engine: str       # default | auto | onnx | native | tflite
    variant: str      # main | fp32 | int8 | ... (the --variant value)
    precision: str    # fp32 | int8 (of the file that runs)

    @property
    def label(self) -> str:
        """Short name for tables and file names."""
        return f"{self.engine}:{self.variant}"

    def flags(self, model_path: str) -> list[str]:
        """The ``edgecall basecall`` options of this run."""
        if self.engine == "default":
            return []  # the model is picked from the reads' chemistry, engine auto
        return ["--model", model_path, "--engine", self.engine, "--variant", self.variant]


@dataclass(frozen=True)
class Run:
    """One basecall run."""

    arch: str
    ok: bool
    seconds: float
    reads: dict[str, str]
    message: str

    @property
    def why(self) -> str:
        """Last line of the error output."""
        return (self.message.strip().splitlines() or ["?"])[-1][:160]


@dataclass(frozen=True)
class Row:
    """The comparison of one spec: x86 and arm64 runs, cells and verdict."""

    spec: Spec
    x86: Run
    arm: Run
    cells: tuple[str, ...]
    verdict: str


def read_fastq(path: Path) -> dict[str, str]:
    """read id -> sequence of a FASTQ file."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for i in range(0, len(lines) - 3, 4):
        out[lines[i][1:].split()[0]] = lines[i + 1]
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, one numpy row per character of ``a``."""
    if a == b:
        return 0
    if not a or not b:
        return max(len(a), len(b))
    bb = np.frombuffer(b.encode(), dtype=np.uint8)
    j = np.arange(len(b) + 1)
    prev = j.copy()
    for i, ch in enumerate(a.encode(), start=1):
        diag = prev[:-1] + (bb != ch)
        up = prev[1:] + 1
        best = np.empty_like(prev)
        best[0] = i
        best[1:] = np.minimum(diag, up)
        # left neighbour: cur[j] = min_k<=j (best[k] + j - k)
        prev = np.minimum.accumulate(best - j) + j
    return int(prev[-1])


def compare(ref: dict[str, str], got: dict[str, str]) -> tuple[int, int, float]:
    """(reads compared, reads identical, fraction of identical bases)."""
    ids = sorted(set(ref) & set(got))
    same = sum(ref[i] == got[i] for i in ids)
    total = sum(max(len(ref[i]), len(got[i])) for i in ids)
    diff = sum(edit_distance(ref[i], got[i]) for i in ids)
    missing = sum(len(ref[i]) for i in set(ref) ^ set(got) if i in ref)
    frac = 1.0 - (diff + missing) / max(1, total + missing)
    return len(ids), same, frac


def precision_of(card: dict) -> str:
    """``int8`` if the card's main file is INT8 (as ``ModelCard.precision``), else ``fp32``."""
    prec = str(card.get("architecture", {}).get("precision", "fp32"))
    return "int8" if prec.startswith("int8") else "fp32"


def model_specs(folder: Path, engines: list[str], bundled: bool = True) -> list[Spec]:
    """The runs a model's card offers: default/auto, onnx + native per ONNX file, tflite.

    ``default`` (no ``--model``) only for a bundled default model: edgecall picks the
    installed copy, so an outside folder marked default is run with ``auto`` instead.
    """
    card = tomllib.loads((folder / "card.toml").read_text())
    main = precision_of(card)
    variants = card.get("model", {}).get("variants", {})
    onnx = [("main", main)] + [(k, "int8" if "int8" in k else "fp32")
                               for k, f in variants.items()
                               if str(f).endswith(".onnx") and k != main]
    specs = []
    first = "default" if card.get("default") and bundled else "auto"
    if first in engines:
        specs.append(Spec(folder.name, first, "main", main))
    for engine in ("onnx", "native"):
        if engine in engines:
            specs += [Spec(folder.name, engine, v, p) for v, p in onnx]
    if "tflite" in engines:
        specs += [Spec(folder.name, "tflite", v, v) for v, (key, name) in TFLITE_FILES.items()
                  if (folder / str(variants.get(key, name))).is_file()]
    return specs


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run ``cmd``; (exit code, seconds, last stderr lines)."""
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return res.returncode, time.monotonic() - t0, "\n".join(res.stderr.strip().splitlines()[-4:])


def in_root(root: Path, cmd: str) -> list[str]:
    """proot + qemu command line running ``cmd`` in the arm64 root (see arm64-rootfs.sh)."""
    script = Path(__file__).with_name("arm64-rootfs.sh")
    return ["bash", "-c", f'source "{script}"; ARM64_ROOT="{root}"; in_root /bin/sh -c "$0"', cmd]


def x86_venv(src: Path, venv: Path) -> Path:
    """A plain host venv with the tree installed as the README says (``pip install .``)."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(["nice", "-n", "10", str(venv / "bin/pip"), "install", "-q", str(src)],
                   check=True)
    subprocess.run(["nice", "-n", "10", str(venv / "bin/pip"), "install", "-q",
                    "ai-edge-litert"], check=False)  # optional, as on a Pi
    return venv


class Runner:
    """Runs one spec on x86 (host venv) and on arm64 (proot + qemu) and keeps the FASTQs."""

    def __init__(self, args: argparse.Namespace, venv: Path, out_dir: Path) -> None:
        self.args, self.venv, self.out_dir = args, venv, out_dir
        self.common = ["basecall", "--threads", str(args.threads), "--max-reads",
                       str(args.max_reads), "--no-progress"]
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    def x86(self, spec: Spec, model: Path, reads: Path) -> Run:
        """The x86 reference run."""
        fq = self.out_dir / f"x86-{spec.model}-{spec.label.replace(':', '-')}.fastq"
        fq.unlink(missing_ok=True)
        cmd = ["nice", "-n", "10", str(self.venv / "bin/edgecall"), *self.common,
               *spec.flags(str(model)), "-o", str(fq), str(reads)]
        rc, secs, err = timed(cmd, self.env)
        return Run("x86", rc == 0, secs, read_fastq(fq), err)

    def arm64(self, spec: Spec, guest_model: str, guest_reads: str) -> Run:
        """The same command inside the emulated arm64 root."""
        name = f"arm64-{spec.model}-{spec.label.replace(':', '-')}.fastq"
        gfq = f"/root/out/{name}"
        host_fq = self.args.root / gfq.lstrip("/")
        host_fq.unlink(missing_ok=True)
        cmd = (f"OMP_NUM_THREADS={self.args.threads} {self.args.venv}/bin/edgecall "
               f"{' '.join(self.common + spec.flags(guest_model))} -o {gfq} {guest_reads}")
        rc, secs, err = timed(in_root(self.args.root, cmd))
        if host_fq.exists():
            shutil.copy2(host_fq, self.out_dir / name)
        return Run("arm64", rc == 0, secs, read_fastq(host_fq), err)


def guest_path_of_reads(args: argparse.Namespace, reads: Path) -> str:
    """Where the reads are inside the root: /data/... (bound) or a copy in its /tmp."""
    if args.shared.resolve() in reads.resolve().parents:
        return f"{GUEST_DATA}/{reads.resolve().relative_to(args.shared.resolve())}"
    shutil.copy2(reads, args.root / "tmp" / reads.name)  # never into the repository
    return f"/tmp/{reads.name}"


def judge(spec: Spec, x86: Run, arm: Run, refs: dict[str, Run]) -> tuple[tuple[str, ...], str]:
    """Comparison cells (same command, x86 onnx fp32, x86 native int8) and the verdict."""
    if not x86.ok or not x86.reads:
        if not arm.ok and any(m in x86.message + arm.message for m in NOT_AVAILABLE) \
                and spec.engine not in ("default", "auto", "onnx"):
            return ("-", "-", "-"), f"not available on x86 nor arm64: {arm.why}"
        return ("-", "-", "-"), f"FAIL (x86 reference: {x86.why or 'no reads'})"
    if not arm.ok or not arm.reads:
        return ("-", "-", "-"), f"FAIL (arm64: {arm.why or 'no reads'})"
    cells, ok = [], {}
    int8 = spec.precision == "int8"
    for key, ref in (("same", x86), ("fp32", refs.get("fp32")),
                     ("exact", refs.get("int8") if int8 else None)):
        if ref is None or not ref.reads:
            cells.append("-")
            continue
        n, same, frac = compare(ref.reads, arm.reads)
        cells.append(f"{same}/{n} reads identical, {frac:.4%} bases")
        exact_needed = key == "same" and spec.precision == "fp32" and spec.engine == "onnx"
        ok[key] = n == len(ref.reads) and frac >= MIN_IDENTICAL and (same == n or not exact_needed)
    if int8:
        good = ok.get("same", False) or ok.get("exact", False)
    else:
        good = ok.get("same", False) and ok.get("fp32", True)
    return tuple(cells), "pass" if good else "FAIL"


def run_model(folder: Path, runner: Runner, args: argparse.Namespace) -> list[Row]:
    """Every spec of one model folder on both sides, compared."""
    card = tomllib.loads((folder / "card.toml").read_text())
    pore = card.get("chemistry", {}).get("pore", "r9.4.1")
    reads = args.reads or args.shared / DEFAULT_READS.get(pore, DEFAULT_READS["r9.4.1"])
    if not reads.exists():
        raise SystemExit(f"arm64_basecall: {reads}: no such reads file (../shared/data?)")
    guest_reads = guest_path_of_reads(args, reads)
    guest_model = f"/root/models/{folder.name}"
    shutil.rmtree(args.root / guest_model.lstrip("/"), ignore_errors=True)
    shutil.copytree(folder, args.root / guest_model.lstrip("/"))
    runs: dict[Spec, tuple[Run, Run]] = {}
    bundled = folder.resolve().parent == (args.x86_src / "models").resolve()
    for spec in model_specs(folder, args.engines.split(), bundled):
        pair = (runner.x86(spec, folder, reads), runner.arm64(spec, guest_model, guest_reads))
        runs[spec] = pair
        for r in pair:
            state = "ok" if r.ok else f"FAILED: {r.why}"
            print(f"{folder.name:24s} {spec.label:12s} {r.arch:6s} {r.seconds:7.1f} s "
                  f"{len(r.reads)} reads  {state}", flush=True)
    # references: x86 onnx fp32 and x86 native int8 of this model (main or variant)
    refs = {p: x for (s, (x, _)) in runs.items()
            for p in ("fp32", "int8") if s.precision == p
            and s.engine == ("onnx" if p == "fp32" else "native")}
    rows = []
    for spec, (x, a) in runs.items():
        cells, verdict = judge(spec, x, a, refs)
        rows.append(Row(spec, x, a, cells, verdict))
    return rows


def report(rows: list[Row], models: list[Path], args: argparse.Namespace) -> str:
    """The Markdown comparison table (one row per model, engine and variant)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# arm64 (emulated) vs x86 basecalls (generated)", "",
             f"Generated by `scripts/arm64-check.sh` on {stamp}. Models: "
             + ", ".join(f"`{m.name}`" for m in models)
             + f"; reads: the first {args.max_reads} of each model's chemistry "
             f"(`{DEFAULT_READS['r9.4.1']}` for R9.4.1) from the shared data; `--threads "
             f"{args.threads}`. x86 = `python3 -m venv` + `pip install <tree>` (+ ai-edge-litert "
             "when it installs), as the README tells a user; arm64 = the same in a Debian "
             "bookworm root under proot + qemu-aarch64-static (QEMU_CPU=max), so its seconds "
             "are emulation time, not Pi speed.", "",
             "Engine `default` = `edgecall basecall READS -o out.fastq` with no `--model`/"
             "`--engine`/`--variant` (the chemistry's default model, `--engine auto`); `auto` "
             "= `--model M --engine auto`. Variant `main` = the card's own file. Pass rule: "
             "arm64 vs x86 of the same command: onnx fp32 identical sequences, every other "
             f"run >= {MIN_IDENTICAL:.1%} identical bases (1 - edit distance / longer length, "
             "over all reads); fp32 runs also >= that vs x86 onnx fp32 of the model. An int8 "
             "run also passes if it matches x86 *native* int8 (exact integer arithmetic): "
             "onnxruntime's x86 AVX2 int8 kernels (u8s8 vpmaddubsw) saturate int16 "
             "intermediates, its arm64 kernels (sdot) do not. int8 vs fp32 is information.",
             "",
             "| model | engine:variant | precision | x86 s | arm64 s | reads x86/arm64 "
             "| arm64 vs x86 same command | arm64 vs x86 onnx fp32 | arm64 vs x86 native int8 "
             "| result |",
             "|---|---|---|---:|---:|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.spec.model} | {r.spec.label} | {r.spec.precision} | "
                     f"{r.x86.seconds:.1f} | {r.arm.seconds:.1f} | "
                     f"{len(r.x86.reads)}/{len(r.arm.reads)} | {' | '.join(r.cells)} | "
                     f"{r.verdict} |")
    fails = sum(r.verdict.startswith("FAIL") for r in rows)
    lines += ["", f"{len(rows)} runs, {fails} failed."]
    return "\n".join(lines) + "\n"


def model_folders(args: argparse.Namespace) -> list[Path]:
    """--model folders, else every bundled one; then the extra (e.g. imported) ones."""
    base = args.model or sorted(p.parent for p in (args.x86_src / "models").glob("*/card.toml"))
    extra = [Path(p).resolve() for p in args.extra_models]
    for folder in extra:
        if not (folder / "card.toml").is_file():
            raise SystemExit(f"arm64_basecall: extra model {folder}: no card.toml")
    return [*base, *extra]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--venv", default="/root/venv")
    ap.add_argument("--x86-src", type=Path, required=True)
    ap.add_argument("--x86-venv", type=Path, required=True,
                    help="x86 venv holding this tree (made here if it has no edgecall)")
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append",
                    help="model folder (repeatable; default: every bundled models/*/)")
    ap.add_argument("--extra-models", nargs="*", default=[],
                    help="more model folders to compare (e.g. an imported CRF model)")
    ap.add_argument("--reads", type=Path)
    ap.add_argument("--max-reads", type=int, default=3)
    ap.add_argument("--engines", default=" ".join(ENGINES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    models = model_folders(args)
    if not (args.x86_venv / "bin/edgecall").exists():
        t0 = time.monotonic()
        x86_venv(args.x86_src, args.x86_venv)
        print(f"x86 venv + pip install: {time.monotonic() - t0:.1f} s", flush=True)
    out_dir = args.run_dir / "basecall"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    (args.root / "root/out").mkdir(exist_ok=True)
    runner = Runner(args, args.x86_venv, out_dir)
    rows = [row for folder in models for row in run_model(folder, runner, args)]
    text = report(rows, models, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if not rows or any(r.verdict.startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
