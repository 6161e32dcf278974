"""Build edgecall: the Python package plus the Cython kernels in kernels/.

The kernels are compiled with -O3 and per-architecture flags (aarch64:
armv8.2-a+dotprod when the compiler accepts it, else armv8-a; x86-64: AVX2/FMA
when the build machine has them, else the portable baseline). If no C compiler
or Cython is available, the build says so loudly and edgecall falls back to its
numpy reference kernels (see edgecall/kernels_backend.py).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _compiler_accepts(flags: list[str]) -> bool:
    """True if the C compiler builds an empty file with ``flags``."""
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.c"
        src.write_text("int main(void){return 0;}\n")
        try:
            res = subprocess.run([cc, *flags, "-c", str(src), "-o", str(Path(tmp) / "t.o")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0


def _cpu_flags() -> set[str]:
    """CPU feature flags of the build machine (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _aarch64_hwcap() -> int | None:
    """AT_HWCAP of the build machine from /proc/self/auxv (ASIMDDP = bit 20, ATOMICS =
    bit 8); None when unreadable. Also right under qemu-user, unlike /proc/cpuinfo."""
    import struct

    try:
        data = Path("/proc/self/auxv").read_bytes()
    except OSError:
        return None
    for i in range(0, len(data) - 15, 16):
        key, val = struct.unpack_from("<QQ", data, i)
        if key == 16:  # AT_HWCAP
            return val
    return None


def arch_flags() -> list[str]:
    """Per-architecture optimisation flags (override with EDGECALL_ARCH_FLAGS)."""
    if "EDGECALL_ARCH_FLAGS" in os.environ:
        return os.environ["EDGECALL_ARCH_FLAGS"].split()
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        # Only target armv8.2-a+dotprod on a CPU that has it (Pi 5 / Cortex-A76): that
        # -march also enables ARMv8.1 LSE atomics, which a Pi 4's Cortex-A72 (ARMv8.0)
        # faults on (SIGILL), e.g. in Cython's memoryview reference counting.
        hwcap = _aarch64_hwcap()
        want_dot = hwcap is None or (bool(hwcap & (1 << 20)) and bool(hwcap & (1 << 8)))
        for flags in ([["-march=armv8.2-a+dotprod"]] if want_dot else []) + [["-march=armv8-a"]]:
            if _compiler_accepts(flags):
                return flags
        return []
    if machine in ("x86_64", "amd64"):
        cpu = _cpu_flags()
        if {"avx2", "fma"} <= cpu and _compiler_accepts(["-mavx2", "-mfma"]):
            return ["-mavx2", "-mfma", "-mf16c"]
    return []


def extensions() -> list:
    """Cython extensions for every kernels/*.pyx (empty list if none or no Cython)."""
    sources = sorted((HERE / "kernels").glob("*.pyx"))
    if not sources:
        return []
    try:
        import numpy as np
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        print(f"edgecall: WARNING: cannot build the Cython kernels ({exc}); "
              "the slow numpy reference kernels will be used", file=sys.stderr)
        return []
    openmp = ["-fopenmp"] if _compiler_accepts(["-fopenmp"]) else []
    cflags = ["-O3", "-ffp-contract=fast", "-fno-math-errno", *arch_flags(), *openmp]
    print(f"edgecall: building kernels with {' '.join(cflags)}", file=sys.stderr)
    headers = [str(h.relative_to(HERE)) for h in sorted((HERE / "kernels").glob("*.h"))]
    exts = [Extension(f"edgecall._kernels.{src.stem}", [str(src.relative_to(HERE))],
                      include_dirs=[np.get_include(), str(HERE / "kernels")], depends=headers,
                      extra_compile_args=cflags, extra_link_args=openmp,
                      define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
            for src in sources]
    return cythonize(exts, compiler_directives={"language_level": "3", "boundscheck": False,
                                                "wraparound": False, "cdivision": True,
                                                "initializedcheck": False})


RUNTIME = ["numpy>=1.24", "pod5>=0.3", "onnxruntime>=1.16", "onnx>=1.14", "psutil>=5.9",
           "tqdm>=4.60", "pysam>=0.21", "edlib>=1.3.9"]
EXTRAS = {
    "test": ["pytest>=7", "mappy>=2.24", "matplotlib>=3.7", "Cython>=3.0"],
    "plot": ["matplotlib>=3.7"],
    "tflite": ["ai-edge-litert>=1.0"],
    "tools": ["torch==2.13.0", "mappy>=2.24", "matplotlib>=3.7", "onnxscript>=0.1",
              "ai-edge-litert>=1.0"],
    # TFLite conversion (tools tflite-export): litert-torch 0.10 keeps torch 2.13 but pulls
    # jax, transformers and ~40 more packages (and pins typing-extensions 4.12), so it is
    # its own extra; a --system-site-packages venv + EDGECALL_LITERT_PYTHON works too.
    "tflite-export": ["torch==2.13.0", "litert-torch==0.10.0", "ai-edge-litert>=2.3"],
}

setup(
    name="edgecall",
    version="0.1.0",
    description="Lean on-device nanopore basecaller for ARM single-board computers",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgecall", "edgecall.*"]) + ["edgecall.bundled_models"],
    package_dir={"edgecall.bundled_models": "models"},
    package_data={"edgecall.bundled_models": ["*.md", "*/*.toml", "*/*.onnx", "*/*.tflite",
                                              "*/*.md", "*/*.png", "*/*.json"]},
    ext_modules=extensions(),
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edgecall=edgecall.cli:main"]},
    zip_safe=False,
)
