"""A description of the host for benchmark reports (re-exported by telemetry).

CPU model (x86 ``model name``; on ARM the board model from the device tree
and the core names from ``CPU part``), core counts, the ISA features that
matter to our kernels (NEON/asimd, dotprod/asimddp, i8mm, SVE, AVX2, FMA,
AVX-512, AVX-512 VNNI, AVX-VNNI), memory, OS, Python and library versions.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

#: ARM ``CPU part`` codes (implementer 0x41) of common SBC and server cores.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4f": "Neoverse-V2",
}

#: ISA feature name in the report -> cpuinfo flags that imply it.
ISA_FLAGS = {
    "neon": ("asimd", "neon"), "dotprod": ("asimddp",), "i8mm": ("i8mm",), "sve": ("sve",),
    "fp16": ("asimdhp", "fphp"), "sse4_2": ("sse4_2",), "avx2": ("avx2",), "fma": ("fma",),
    "avx512f": ("avx512f",), "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),
}

LIBRARIES = ("edgecall", "numpy", "onnxruntime", "onnx", "pod5", "psutil", "Cython",
             "ai-edge-litert", "tflite-runtime", "matplotlib", "pysam", "torch")


def _cpuinfo(proc_root: Path) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per block (blank-line separated)."""
    try:
        text = (proc_root / "cpuinfo").read_text()
    except OSError:
        return []
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1].setdefault(key.strip(), value.strip())
    return [b for b in blocks if b]


def cpu_description(proc_root: Path = Path("/proc"),
                    dt_model: Path = Path("/sys/firmware/devicetree/base/model"),
                    ) -> dict[str, Any]:
    """CPU model, board and ISA flags from /proc/cpuinfo and the device tree."""
    blocks = _cpuinfo(proc_root)
    flags: set[str] = set()
    models, parts = [], []
    for b in blocks:
        flags |= set((b.get("flags") or b.get("Features") or "").split())
        if "model name" in b:
            models.append(b["model name"])
        if b.get("CPU implementer") == "0x41" and "CPU part" in b:
            parts.append(ARM_PARTS.get(b["CPU part"].lower(), f"ARM part {b['CPU part']}"))
    board = ""
    try:
        board = dt_model.read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        board = next((b["Model"] for b in blocks if "Model" in b), "")
    cores = sorted(set(parts)) or sorted(set(models))
    model = ", ".join(cores) or platform.processor() or platform.machine()
    return {"model": model, "board": board, "arch": platform.machine(),
            "isa": {k: any(f in flags for f in v) for k, v in ISA_FLAGS.items()},
            "flags": sorted(flags)}


def _os_name() -> str:
    """PRETTY_NAME from /etc/os-release, else platform.platform()."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed distribution versions (None when not installed); nothing is imported."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if "edgecall" in out and out["edgecall"] is None:  # running from a source checkout
        from edgecall import __version__

        out["edgecall"] = f"{__version__} (source)"
    return out


def machine_info(proc_root: Path = Path("/proc")) -> dict[str, Any]:
    """Describe this machine for a benchmark report.

    Parameters
    ----------
    proc_root : Path
        Where ``cpuinfo`` lives (injectable for tests).

    Returns
    -------
    dict
        ``cpu`` (model, board, arch, isa flags), ``cores`` (logical, physical,
        usable), ``memory_bytes``, ``os``, ``kernel``, ``python``,
        ``libraries`` (name -> version or None) and ``kernels`` (edgecall's
        compiled-kernel backend).
    """
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    cpu = cpu_description(proc_root)
    cpu.pop("flags")
    return {
        "cpu": cpu,
        "cores": {"logical": os.cpu_count(), "physical": psutil.cpu_count(logical=False),
                  "usable": usable},
        "memory_bytes": int(psutil.virtual_memory().total),
        "os": _os_name(), "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": library_versions(),
        "kernels": kernels_description(),
    }


def kernels_description() -> str:
    """edgecall's active kernel backend, e.g. ``compiled kernels (avx2+fma)``."""
    try:
        from edgecall.kernels_backend import backend_name

        return backend_name()
    except Exception as exc:  # noqa: BLE001 - a description must not fail the report
        return f"unavailable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
