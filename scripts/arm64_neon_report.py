"""Disassemble arm64-built kernels and report NEON / dotprod use in their hot loops.

For every kernel function in each shared object (``aarch64-linux-gnu-objdump -d``)
the script finds the loops (backward branches inside the function), keeps the
innermost ones, and counts in them: fp32 vector multiply(-accumulate)s on
v-registers (``fmla``/``fmul``/``fmadd`` lane forms ``.4s``/``.2s``), int8 dot
products (``sdot``/``udot``), widening integer multiply-accumulates
(``smlal``/``smull``/``umlal``/``sadalp``/``mla``) and scalar fp ``fmadd``/``fmul``
on s-registers. The output is a generated Markdown report, not a test.

Usage::

    python scripts/arm64_neon_report.py --native A.so ... --cross B.so ... --out REPORT.md
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

OBJDUMP = "aarch64-linux-gnu-objdump"
FUNC_RE = re.compile(r"^([0-9a-f]+) <(.+)>:$")
INSN_RE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
BRANCH_RE = re.compile(r"^(b|b\.\w+|cbz|cbnz|tbz|tbnz)$")
TARGET_RE = re.compile(r"\b([0-9a-f]+) <")
CLASSES = {
    "fp32 vec fmla/fmul": re.compile(r"^(fmla|fmls|fmul|fmadd)$"),
    "sdot/udot": re.compile(r"^(sdot|udot|usdot|sudot)$"),
    "int vec mlal/mull": re.compile(r"^(smlal2?|smull2?|umlal2?|umull2?|sadalp|uadalp|mla|mul)$"),
}
#: ARMv8.1 LSE atomics: a Cortex-A72 (Pi 4, ARMv8.0) faults on them (SIGILL).
LSE_RE = re.compile(r"^(ldadd|ldclr|ldeor|ldset|ldsmax|ldsmin|ldumax|ldumin|swp|cas|casp)"
                    r"(a|al|l)?(b|h)?$")
VEC_RE = re.compile(r"\bv\d+\.(\d+[bhsd])")
# Cython/CPython plumbing, never a hot loop.
SKIP_RE = re.compile(r"^(__Pyx|__pyx_memview|__pyx_array|__pyx_tp_|__pyx_mp_|__pyx_sq_|"
                     r"__pyx_getprop|__pyx_setprop|__pyx_pymod|__pyx_pw_|_init|_fini|"
                     r"deregister|register_tm|frame_dummy|__do_global|PyInit|\.plt|.*@plt)")


@dataclass(frozen=True)
class FuncStats:
    """Instruction counts for one function."""

    name: str
    n_insns: int
    n_loops: int
    n_inner: int
    inner_counts: dict[str, int]
    all_counts: dict[str, int]
    inner_vec_fp: int  # innermost loops containing a vector fp32 fmla/fmul


def is_kernel(name: str) -> bool:
    """Our code (kernel bodies, their OpenMP outlined regions, C helpers), not plumbing."""
    if "_8edgecall_" in name or "_omp_fn" in name or name.startswith("__pyx_pf_"):
        return not name.startswith("__pyx_pw_")
    return not SKIP_RE.match(name) and not name.startswith(("__pyx", "__Pyx", "_", "Py"))


def classify(mnemonic: str, operands: str) -> str | None:
    """Which class an instruction belongs to (vector forms only where relevant)."""
    if LSE_RE.match(mnemonic):
        return "LSE atomics (v8.1)"
    vec = VEC_RE.search(operands)
    if CLASSES["sdot/udot"].match(mnemonic):
        return "sdot/udot"
    if CLASSES["fp32 vec fmla/fmul"].match(mnemonic):
        if vec and vec.group(1) in ("4s", "2s"):
            return "fp32 vec fmla/fmul"
        if re.match(r"^s\d+,", operands):
            return "scalar fp fmadd/fmul"
        return None
    if CLASSES["int vec mlal/mull"].match(mnemonic) and vec:
        return "int vec mlal/mull"
    return None


def demangle(sym: str) -> str:
    """Readable name for Cython symbols (module.function), others unchanged."""
    m = re.match(r"^__pyx_(?:pf|f)_(?:8edgecall_8_kernels_)?(\d+)(\w+)$", sym.split(".")[0])
    if not m:
        return sym
    n, rest = int(m.group(1)), m.group(2)
    module, tail = rest[:n], rest[n:]
    tail = re.sub(r"^_\d+", "", tail).lstrip("_")
    suffix = sym[len(sym.split(".")[0]):]
    return f"{module}.{tail}{suffix}"


def parse(so: Path) -> list[FuncStats]:
    """Per-function loop and instruction statistics of one shared object."""
    text = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(so)], check=True,
                          capture_output=True, text=True).stdout
    funcs: list[tuple[str, list[tuple[int, str, str]]]] = []
    for line in text.splitlines():
        fm = FUNC_RE.match(line)
        if fm:
            funcs.append((fm.group(2), []))
            continue
        im = INSN_RE.match(line)
        if im and funcs:
            funcs[-1][1].append((int(im.group(1), 16), im.group(2), im.group(3)))
    out = []
    for name, insns in funcs:
        if not insns or not is_kernel(name):
            continue
        lo, hi = insns[0][0], insns[-1][0]
        loops = []
        for addr, mn, ops in insns:
            if BRANCH_RE.match(mn):
                tm = TARGET_RE.search(ops)
                if tm:
                    tgt = int(tm.group(1), 16)
                    if lo <= tgt <= addr <= hi:
                        loops.append((tgt, addr))
        inner = [r for r in loops
                 if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in loops)]
        all_counts: dict[str, int] = {}
        inner_counts: dict[str, int] = {}
        inner_vec = 0
        for addr, mn, ops in insns:
            c = classify(mn, ops)
            if c:
                all_counts[c] = all_counts.get(c, 0) + 1
                if any(a <= addr <= b for a, b in inner):
                    inner_counts[c] = inner_counts.get(c, 0) + 1
        for a, b in inner:
            if any(a <= addr <= b and classify(mn, ops) == "fp32 vec fmla/fmul"
                   for addr, mn, ops in insns):
                inner_vec += 1
        if not all_counts and not loops and not name.startswith("__Pyx"):
            continue
        out.append(FuncStats(demangle(name), len(insns), len(loops), len(inner),
                             inner_counts, all_counts, inner_vec))
    return out


COLS = ("fp32 vec fmla/fmul", "sdot/udot", "int vec mlal/mull", "scalar fp fmadd/fmul")


def object_counts(so: Path) -> dict[str, int]:
    """Whole-object instruction class counts (all functions, Cython plumbing included)."""
    text = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(so)], check=True,
                          capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    func = ""
    for line in text.splitlines():
        fm = FUNC_RE.match(line)
        if fm:
            func = fm.group(2)
        im = INSN_RE.match(line)
        # libgcc's -moutline-atomics helpers choose LSE or LL/SC at run time: safe on v8.0
        if im and not func.startswith("__aarch64_"):
            c = classify(im.group(2), im.group(3))
            if c:
                counts[c] = counts.get(c, 0) + 1
    return counts


def section(title: str, sos: list[Path]) -> list[str]:
    """Markdown lines for one set of shared objects."""
    lines = [f"## {title}", ""]
    if not sos:
        return [*lines, "(no shared objects: not built in this run)", ""]
    for so in sos:
        stats = parse(so)
        lines += [f"### `{so.name}`", "",
                  "| function | insns | loops (innermost) | innermost loops with fp32 "
                  "NEON | " + " | ".join(f"{c} (inner/all)" for c in COLS) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(COLS)]
        for s in sorted(stats, key=lambda s: s.name):
            if s.n_loops == 0:
                continue
            cells = [f"{s.inner_counts.get(c, 0)}/{s.all_counts.get(c, 0)}" for c in COLS]
            lines.append(f"| `{s.name}` | {s.n_insns} | {s.n_loops} ({s.n_inner}) | "
                         f"{s.inner_vec_fp} | " + " | ".join(cells) + " |")
        tot = {c: sum(s.all_counts.get(c, 0) for s in stats) for c in COLS}
        inn = {c: sum(s.inner_counts.get(c, 0) for s in stats) for c in COLS}
        whole = object_counts(so)
        lines += ["", "Totals (innermost loops / kernel functions): "
                  + ", ".join(f"{c}: {inn[c]}/{tot[c]}" for c in COLS)
                  + f". ARMv8.1 LSE atomics inlined anywhere in the object (Cython "
                  f"reference counting; SIGILL on a Cortex-A72; libgcc's run-time "
                  f"dispatched `__aarch64_*` outline atomics not counted): "
                  f"{whole.get('LSE atomics (v8.1)', 0)}.",
                  ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--native", nargs="*", type=Path, default=[],
                    help=".so files built by `pip install .` inside the arm64 root")
    ap.add_argument("--cross", nargs="*", type=Path, default=[],
                    help=".so files cross-built for the Pi 5 (-march=armv8.2-a+dotprod)")
    ap.add_argument("--cross-pi4", nargs="*", type=Path, default=[],
                    help=".so files cross-built for the Pi 4 (-march=armv8-a)")
    ap.add_argument("--flags", default="?", help="cross compiler command line")
    ap.add_argument("--out", default="", help="Markdown report path ('' = stdout only)")
    args = ap.parse_args(argv)
    native = [p for p in args.native if p.exists()]
    cross = [p for p in args.cross if p.exists()]
    cross4 = [p for p in args.cross_pi4 if p.exists()]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# NEON / dotprod evidence for the arm64 kernels (generated)", "",
        f"Generated by `scripts/arm64-check.sh` ({stamp}) with `{OBJDUMP} -d`. "
        "A loop is a backward branch inside a function; *innermost* loops contain no "
        "other loop. Counts are `in innermost loops / anywhere in the function`. "
        "`fp32 vec` = fmla/fmls/fmul on `v*.4s`/`.2s` (incl. by-element forms); "
        "`sdot/udot` = ARMv8.2 dot product (needs `+dotprod`); `int vec` = "
        "smlal/smull/sadalp/mla/mul on v-registers (the int16-pair int8 path); "
        "`scalar fp` = fmadd/fmul on s-registers (not vectorised). Cython plumbing "
        "(`__Pyx*`, memoryview helpers, argument wrappers) is left out.", "",
        f"Cross compiler: `{args.flags.strip()}`", "",
    ]
    lines += section("Built natively inside the emulated Debian bookworm arm64 root "
                     "(`pip install .`, Debian gcc 12, setup.py flags)", native)
    lines += section("Cross-built on the host for a Pi 5 (aarch64-linux-gnu-gcc 12, "
                     "-march=armv8.2-a+dotprod)", cross)
    lines += section("Cross-built on the host for a Pi 4 (aarch64-linux-gnu-gcc 12, "
                     "-march=armv8-a)", cross4)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
