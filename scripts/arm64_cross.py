"""Cross-compile edgecall's Cython kernels for aarch64 on an x86-64 host.

Each ``kernels/*.pyx`` is translated to C by the host's Cython (same compiler
directives as ``setup.py``) and compiled by Debian's ``aarch64-linux-gnu-gcc``
against the arm64 root file system's Python 3.11 and numpy headers, with the
flags ``setup.py`` uses on a Pi (``-O3 -ffp-contract=fast -fno-math-errno -fopenmp``
plus ``-march=armv8.2-a+dotprod`` for a Pi 5 / Cortex-A76 and ``-march=armv8-a``
for a Pi 4 / Cortex-A72). Per ``-march`` the result is a copy of the ``edgecall``
package whose ``_kernels`` hold the cross-built ``.so`` files (``OUT/<tag>/pkg``),
ready to be imported by the emulated arm64 Python (``scripts/arm64-check.sh``).

Usage::

    python scripts/arm64_cross.py --src TREE --root ARM64_ROOT --venv /root/venv --out DIR
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import sys
from pathlib import Path

CC = "aarch64-linux-gnu-gcc"
DIRECTIVES = {"language_level": "3", "boundscheck": "False", "wraparound": "False",
              "cdivision": "True", "initializedcheck": "False"}
MARCH = {"pi5": "armv8.2-a+dotprod", "pi4": "armv8-a"}
CFLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-fopenmp", "-fPIC",
          "-fno-strict-aliasing", "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION"]
EXT_SUFFIX = ".cpython-311-aarch64-linux-gnu.so"


def numpy_include(root: Path, venv: str) -> Path:
    """The numpy C headers inside the arm64 venv (numpy 2.x or 1.x layout)."""
    base = root / venv.lstrip("/")
    for pattern in ("lib/python3*/site-packages/numpy/_core/include",
                    "lib/python3*/site-packages/numpy/core/include"):
        hits = sorted(glob.glob(str(base / pattern)))
        if hits:
            return Path(hits[0])
    raise SystemExit(f"arm64_cross: no numpy headers under {base} (run the venv step first)")


def build(src: Path, root: Path, venv: str, out: Path, march: str) -> list[Path]:
    """Cythonize and cross-compile every kernel for ``-march``; returns the .so paths."""
    pyxs = sorted((src / "kernels").glob("*.pyx"))
    if not pyxs:
        print("arm64_cross: no kernels/*.pyx in the tree; nothing to build")
    if shutil.which(CC) is None:
        raise SystemExit(f"arm64_cross: {CC} not found (apt-get install gcc-aarch64-linux-gnu)")
    py_inc = root / "usr/include/python3.11"
    if not (py_inc / "Python.h").exists():
        raise SystemExit(f"arm64_cross: {py_inc}/Python.h missing (python3-dev in the root?)")
    np_inc = numpy_include(root, venv)
    if out.exists():
        shutil.rmtree(out)
    pkg = out / "pkg"
    shutil.copytree(src / "edgecall", pkg / "edgecall",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    cdir = out / "c"
    cdir.mkdir(parents=True)
    flags = [*CFLAGS, f"-march={march}"]
    (out / "flags.txt").write_text(" ".join([CC, *flags]) + "\n")
    built = []
    for pyx in pyxs:
        c_file = cdir / f"{pyx.stem}.c"
        cy = [sys.executable, "-m", "cython", "-3", "-o", str(c_file),
              "--module-name", f"edgecall._kernels.{pyx.stem}", "-I", str(src / "kernels")]
        for key, val in DIRECTIVES.items():
            cy += ["-X", f"{key}={val}"]
        subprocess.run([*cy, str(pyx)], check=True)
        so = pkg / "edgecall" / "_kernels" / f"{pyx.stem}{EXT_SUFFIX}"
        # pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>: search the root's
        # /usr/include last so the cross toolchain's own libc headers win.
        cmd = [CC, *flags, "-shared", "-I", str(py_inc), "-I", str(np_inc),
               "-I", str(src / "kernels"), "-idirafter", str(root / "usr/include"),
               str(c_file), "-o", str(so), "-lm"]
        print(" ".join(cmd[:len(flags) + 2]), "...", so.name, flush=True)
        subprocess.run(cmd, check=True)
        # Keep an assembly listing next to the C for the NEON report.
        subprocess.run([*cmd[:-4], str(c_file), "-S", "-o", str(cdir / f"{pyx.stem}.s")],
                       check=True)
        built.append(so)
    return built


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="clean project tree")
    ap.add_argument("--root", type=Path, required=True, help="arm64 root file system")
    ap.add_argument("--venv", default="/root/venv", help="venv path inside the root")
    ap.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    ap.add_argument("--targets", nargs="*", default=list(MARCH), choices=list(MARCH))
    args = ap.parse_args(argv)
    for tag in args.targets:
        built = build(args.src, args.root, args.venv, args.out / tag, MARCH[tag])
        for so in built:
            info = subprocess.run(["file", "-b", str(so)], capture_output=True,
                                  text=True).stdout
            print(f"{tag} {so.name}: {info.strip()[:80]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
