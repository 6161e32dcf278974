"""Print the kernel compiler flags setup.py would choose on this machine, without building.

Run inside the emulated root under different ``QEMU_CPU`` models to check that a
Pi 5 (Cortex-A76: asimddp + atomics) gets ``-march=armv8.2-a+dotprod`` and a Pi 4
(Cortex-A72, ARMv8.0) gets ``-march=armv8-a``. Only setup.py's flag functions are
executed (extracted with ``ast``); ``setup()`` is not called.

Usage: python scripts/arm64_flags_probe.py [path/to/setup.py]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

NAMES = {"_compiler_accepts", "_cpu_flags", "_aarch64_hwcap", "arch_flags"}


def main() -> int:
    """Print the hwcap bits and the chosen flags."""
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "setup.py")
    mod = ast.parse(path.read_text())
    keep = [n for n in mod.body if isinstance(n, ast.Import | ast.ImportFrom)
            or (isinstance(n, ast.FunctionDef) and n.name in NAMES)]
    ns: dict = {"__file__": str(path)}
    exec(compile(ast.Module(keep, []), str(path), "exec"), ns)  # noqa: S102
    hwcap = ns["_aarch64_hwcap"]() if "_aarch64_hwcap" in ns else None
    if hwcap is not None:
        print(f"AT_HWCAP=0x{hwcap:x} asimddp={bool(hwcap >> 20 & 1)} "
              f"atomics={bool(hwcap >> 8 & 1)}")
    print("setup.py flags:", " ".join(ns["arch_flags"]()) or "(none)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
