"""The one place that chooses compiled (Cython) or numpy-reference kernels.

``kernels()`` returns a :class:`Kernels` bundle with every kernel function
(same names and signatures in both backends). The compiled modules
``edgecall._kernels.{conv,qconv,ctc,crf}`` are used unless ``EDGECALL_PURE_PYTHON=1``
or the machine has no C compiler (then a warning is logged). If the compiled
modules should exist but cannot be imported, :class:`KernelsMissing` is raised
with the command that builds them: a failed build is never silently slow.

Also here: the weight packing helpers shared by both backends.
"""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edgecall.errors import EdgecallError

log = logging.getLogger(__name__)

NR = 16  # GEMM panel width; must match EC_NR in kernels/ec_simd.h
_NAMES = {
    "conv": ("conv_generic", "depthwise_conv", "pointwise_conv", "stem_conv", "dwpw_conv"),
    "qconv": ("qpack", "quantize", "dequantize", "requantize", "qadd", "qconv_generic",
              "qdepthwise_conv", "qpointwise_conv", "qstem_conv", "qdwpw_conv"),
    "ctc": ("greedy", "beam_search"),
    "crf": ("crf_viterbi", "crf_backward", "crf_forward_backward", "crf_beam_search"),
}
#: numpy reference module per compiled module (default :mod:`edgecall.kernels_ref`)
_REFS = {"crf": "edgecall.crf_ref"}


class KernelsMissing(EdgecallError):
    """The compiled kernels are not built (and the pure path was not asked for)."""


@dataclass(frozen=True)
class Kernels:
    """A backend: its name, SIMD path and kernel functions by name."""

    name: str  # "compiled" | "numpy"
    simd: str
    funcs: dict[str, Callable[..., Any]]

    def __getattr__(self, item: str) -> Callable[..., Any]:
        try:
            return self.funcs[item]
        except KeyError:
            raise AttributeError(item) from None

    def describe(self) -> str:
        """One line for logs and ``--version`` style output."""
        return f"{self.name} kernels ({self.simd})"


_CACHE: dict[bool, Kernels] = {}


def pure_requested() -> bool:
    """True when ``EDGECALL_PURE_PYTHON=1`` asks for the numpy reference kernels."""
    return os.environ.get("EDGECALL_PURE_PYTHON", "").strip() not in ("", "0")


def _have_compiler() -> bool:
    """True if a C compiler is on PATH (the kernels could have been built)."""
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None or shutil.which("cc") is not None


def _numpy() -> Kernels:
    import importlib

    funcs = {}
    for mod, names in _NAMES.items():
        ref = importlib.import_module(_REFS.get(mod, "edgecall.kernels_ref"))
        funcs.update({n: getattr(ref, n) for n in names})
    return Kernels("numpy", "numpy", funcs)


def _compiled() -> Kernels:
    import importlib

    mods: dict[str, ModuleType] = {}
    for mod in _NAMES:
        mods[mod] = importlib.import_module(f"edgecall._kernels.{mod}")
    try:
        funcs = {n: getattr(mods[m], n) for m, names in _NAMES.items() for n in names}
    except AttributeError as exc:
        raise KernelsMissing(f"compiled kernels are out of date ({exc}); rebuild them with "
                             "`python setup.py build_ext --inplace` (or `pip install .`)") from None
    return Kernels("compiled", mods["conv"].simd(), funcs)


def kernels(pure: bool | None = None) -> Kernels:
    """The active kernel backend (cached).

    Parameters
    ----------
    pure : bool, optional
        Force the numpy reference (True) or the compiled kernels (False);
        default: compiled unless ``EDGECALL_PURE_PYTHON=1``.

    Raises
    ------
    KernelsMissing
        If compiled kernels are wanted but not built while a compiler exists.
    """
    want_pure = pure_requested() if pure is None else pure
    if want_pure in _CACHE:
        return _CACHE[want_pure]
    if want_pure:
        k = _numpy()
    else:
        try:
            k = _compiled()
        except ImportError as exc:
            if pure is None and not _have_compiler():
                log.warning("no C compiler and no compiled kernels (%s): using the slow numpy "
                            "reference kernels", exc)
                k = _numpy()
            else:
                raise KernelsMissing(
                    f"compiled kernels are missing ({exc}); build them with `python setup.py "
                    "build_ext --inplace` (or `pip install .`), or set EDGECALL_PURE_PYTHON=1 "
                    "for the slow numpy reference") from None
    log.info("edgecall kernels: %s", k.describe())
    _CACHE[want_pure] = k
    return k


def backend_name() -> str:
    """Which backend is active, e.g. ``compiled kernels (avx2+fma)``."""
    return kernels().describe()


# ---- weight packing (shared by both backends) ------------------------------


def pack_pointwise(w: np.ndarray) -> np.ndarray:
    """``[K, Cout]`` float weight -> packed panels ``[ceil(Cout/16), K, 16]`` (zero padded)."""
    k, cout = w.shape
    nb = -(-cout // NR)
    wp = np.zeros((k, nb * NR), dtype=np.float32)
    wp[:, :cout] = w
    return np.ascontiguousarray(wp.reshape(k, nb, NR).transpose(1, 0, 2))


def pack_qpointwise(w: np.ndarray, pack: int = 2) -> np.ndarray:
    """``[K, Cout]`` int8 weight -> panels ``[ceil(Cout/16), Kp/pack, 16*pack]``.

    ``pack`` is the backend's ``qpack()``: 2 = int16 pairs ``(w[k], w[k+1])`` per
    column (pmaddwd/vmlal), 4 = int8 quads ``w[k..k+3]`` per column (sdot).
    """
    k, cout = w.shape
    nb, kq = -(-cout // NR), -(-k // pack)
    dtype = np.int8 if pack == 4 else np.int16
    wp = np.zeros((kq * pack, nb * NR), dtype=dtype)
    wp[:k, :cout] = w
    # [kq, pack, nb, NR] -> [nb, kq, NR, pack]
    wp = wp.reshape(kq, pack, nb, NR).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(wp.reshape(nb, kq, pack * NR))


def pad_channels(v: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad a per-channel vector to length ``n`` (contiguous copy)."""
    out = np.zeros(n, dtype=v.dtype)
    out[:v.shape[0]] = v
    return out


def blas_sgemm_pointer() -> int:
    """Address of ``scipy.linalg.cython_blas.sgemm`` (benchmarks; needs scipy)."""
    import ctypes

    from scipy.linalg import cython_blas

    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return int(get_ptr(capsule, get_name(capsule)))
