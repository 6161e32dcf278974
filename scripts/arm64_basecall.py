"""Basecall the same reads on emulated arm64 and on x86 with every engine, and compare.

Driven by ``scripts/arm64-check.sh`` after the arm64 venv exists. The x86
reference uses the *same* clean tree, installed into a host venv (with the
host's site packages, kernels built for x86). For each engine the arm64 output
is compared read by read with the x86 output of the same engine and with x86
onnxruntime FP32: onnxruntime must give identical sequences; the other engines
must have at least ``MIN_IDENTICAL`` of bases identical (1 - edit distance /
longer length, summed over reads). Engines that do not install or do not
support the model are reported as such, not failed.

Usage::

    python scripts/arm64_basecall.py --root ROOT --venv /root/venv --x86-src TREE \
        --run-dir DIR --shared ../shared/data [--model DIR] [--reads POD5] [--out MD]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
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


@dataclass(frozen=True)
class Run:
    """One basecall run."""

    engine: str
    arch: str
    ok: bool
    seconds: float
    reads: dict[str, str]
    message: str


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


def pick_model(src: Path, run_dir: Path, model: Path | None) -> Path:
    """The model folder: --model, else the first bundled one, else a random-weight student.

    The fallback is the ``tools.arch`` student family (stem, depthwise + pointwise
    blocks, ReLU, projection, log-softmax; BN folded) with random weights and a QDQ
    int8 copy, built by ``bench/pi_projection.py``: the same ops as a trained model,
    so every engine path runs, though the "basecalls" mean nothing.
    """
    if model is not None:
        return model
    for card in sorted((src / "models").glob("*/card.toml")):
        return card.parent
    spec = importlib.util.spec_from_file_location("pi_projection",
                                                  src / "bench" / "pi_projection.py")
    proj = importlib.util.module_from_spec(spec)
    sys.modules["pi_projection"] = proj  # dataclasses look their module up
    spec.loader.exec_module(proj)
    folder = run_dir / "student_random"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    proj.build_student_onnx(folder / "model.onnx", 64, 6, 15, 9, 3)
    has8 = proj.quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", 3)
    proj.write_card(folder, "student_random_64x6", 3, has8)
    print(f"no trained model in models/: using a random-weight student {folder}", flush=True)
    return folder


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run ``cmd``; (exit code, seconds, last stderr lines)."""
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return res.returncode, time.monotonic() - t0, "\n".join(res.stderr.strip().splitlines()[-3:])


def in_root(root: Path, cmd: str) -> list[str]:
    """proot + qemu command line running ``cmd`` in the arm64 root (see arm64-rootfs.sh)."""
    script = Path(__file__).with_name("arm64-rootfs.sh")
    return ["bash", "-c", f'source "{script}"; ARM64_ROOT="{root}"; in_root /bin/sh -c "$0"', cmd]


def x86_venv(src: Path, run_dir: Path) -> Path:
    """A host venv with the same tree installed (x86 kernels built by setup.py)."""
    venv = run_dir / "x86-venv"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    subprocess.run(["nice", "-n", "10", str(venv / "bin/pip"), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(src)], check=True)
    return venv


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--venv", default="/root/venv")
    ap.add_argument("--x86-src", type=Path, required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--reads", type=Path)
    ap.add_argument("--max-reads", type=int, default=3)
    ap.add_argument("--engines", default="onnx native tflite")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--x86-venv", type=Path, help="reuse this x86 venv (same tree)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    model = pick_model(args.x86_src, args.run_dir, args.model)
    card = tomllib.loads((model / "card.toml").read_text())
    pore = card.get("chemistry", {}).get("pore", "r9.4.1")
    reads = args.reads or args.shared / DEFAULT_READS.get(pore, DEFAULT_READS["r9.4.1"])
    if not reads.exists():
        print(f"arm64_basecall: {reads}: no such reads file (is ../shared/data there?)")
        return 1
    if args.shared.resolve() in reads.resolve().parents:
        guest_reads = f"{GUEST_DATA}/{reads.resolve().relative_to(args.shared.resolve())}"
    else:  # copy outside reads into the root's tmp (never into the repository)
        shutil.copy2(reads, args.root / "tmp" / reads.name)
        guest_reads = f"/tmp/{reads.name}"
    guest_model = args.root / "root/model"
    shutil.rmtree(guest_model, ignore_errors=True)
    shutil.copytree(model, guest_model)
    out_dir = args.run_dir / "basecall"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    (args.root / "root/out").mkdir(exist_ok=True)

    t0 = time.monotonic()
    if args.x86_venv and (args.x86_venv / "bin/edgecall").exists():
        venv = args.x86_venv  # already holds this tree (same run of the check)
    else:
        venv = x86_venv(args.x86_src, args.run_dir)
    print(f"x86 venv + install: {time.monotonic() - t0:.1f} s", flush=True)
    common = ["basecall", "--threads", str(args.threads), "--max-reads", str(args.max_reads),
              "--no-progress"]
    runs: dict[tuple[str, str], Run] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for engine in args.engines.split():  # "name" or "name:variant"
        name, _, variant = engine.partition(":")
        variant = variant or "fp32"
        tag = engine.replace(":", "-")
        fq = out_dir / f"x86-{tag}.fastq"
        rc, secs, err = timed(["nice", "-n", "10", str(venv / "bin/edgecall"), *common,
                               "--engine", name, "--variant", variant, "--model", str(model),
                               "-o", str(fq), str(reads)], env)
        runs[(engine, "x86")] = Run(engine, "x86", rc == 0, secs, read_fastq(fq), err)
        gfq = f"/root/out/arm64-{tag}.fastq"
        (args.root / gfq.lstrip("/")).unlink(missing_ok=True)
        cmd = (f"OMP_NUM_THREADS={args.threads} {args.venv}/bin/edgecall {' '.join(common)} "
               f"--engine {name} --variant {variant} --model /root/model -o {gfq} "
               f"{guest_reads}")
        rc, secs, err = timed(in_root(args.root, cmd))
        host_fq = args.root / gfq.lstrip("/")
        if host_fq.exists():
            shutil.copy2(host_fq, out_dir / f"arm64-{tag}.fastq")
        runs[(engine, "arm64")] = Run(engine, "arm64", rc == 0, secs, read_fastq(host_fq), err)
        for arch in ("x86", "arm64"):
            r = runs[(engine, arch)]
            state = "ok" if r.ok else f"FAILED: {r.message.splitlines()[-1] if r.message else ''}"
            print(f"{arch:6s} {engine:7s} {r.seconds:7.1f} s  {len(r.reads)} reads  {state}",
                  flush=True)

    ref = runs.get(("onnx", "x86"))
    lines = ["# arm64 (emulated) vs x86 basecalls (generated)", "",
             f"Generated by `scripts/arm64-check.sh` on "
             f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}. Model: "
             f"`{card.get('name', model.name)}` ({model}); reads: `{reads}` (first "
             f"{args.max_reads}); `--threads {args.threads}`. arm64 = Debian bookworm "
             "root under proot + qemu-aarch64-static (QEMU_CPU=max), so its seconds are "
             "emulation time, not Pi speed. Pass rule: arm64 vs x86 of the same engine: "
             "onnx fp32 identical sequences, every other engine/variant >= "
             f"{MIN_IDENTICAL:.1%} identical bases (1 - edit distance / longer length, over "
             "all reads); fp32 engines also >= that vs x86 onnx fp32 (int8 vs fp32 is shown "
             "for information only). An int8 run also passes if it matches x86 *native* int8, "
             "the exact-integer reference: onnxruntime's x86 AVX2 int8 kernels (u8s8 "
             "vpmaddubsw) saturate int16 intermediates, its arm64 kernels (sdot) do not.", "",
             "| engine | x86 s | arm64 s | reads x86/arm64 | arm64 vs x86 same engine "
             "| arm64 vs x86 onnx fp32 | arm64 vs x86 native int8 | result |",
             "|---|---:|---:|---|---|---|---|---|"]
    exact = runs.get(("native:int8", "x86"))
    failures = 0
    for engine in args.engines.split():
        x, a = runs[(engine, "x86")], runs[(engine, "arm64")]
        if not a.ok or not a.reads:
            why = (a.message.splitlines() or ["?"])[-1][:140]
            lines.append(f"| {engine} | {x.seconds:.1f} | {a.seconds:.1f} | "
                         f"{len(x.reads)}/{len(a.reads)} | - | - | - | not run on arm64: {why} |")
            if engine == "onnx":
                failures += 1
            continue
        cells = []
        ok = {}
        int8 = engine.endswith(":int8")
        for key, refrun in (("same", x), ("fp32", ref), ("exact", exact if int8 else None)):
            if refrun is None or not refrun.reads:
                cells.append("-")
                continue
            n, same, frac = compare(refrun.reads, a.reads)
            cells.append(f"{same}/{n} reads identical, {frac:.4%} bases")
            need_exact = engine == "onnx" and key == "same"
            ok[key] = n > 0 and frac >= MIN_IDENTICAL and (same == n or not need_exact)
        if int8:
            good = ok.get("same", False) or ok.get("exact", False)
        else:
            good = ok.get("same", False) and ok.get("fp32", True)
        verdict = "pass" if good else "FAIL"
        if verdict == "FAIL":
            failures += 1
        lines.append(f"| {engine} | {x.seconds:.1f} | {a.seconds:.1f} | "
                     f"{len(x.reads)}/{len(a.reads)} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{verdict} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
