"""Read torch-saved tensors with numpy only: dorado ``.tensor`` files and bonito state dicts.

Both are ZIP archives (entries stored) written by torch: a ``<prefix>/data.pkl`` pickle
whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
calls on persistent ids ``('storage', torch.FloatStorage, key, location, numel)``, and the
raw little-endian storages under ``<prefix>/data/<key>``.

* a dorado ``.tensor`` file is a TorchScript module whose attribute ``"0"`` is the tensor;
* a bonito ``weights_N.tar`` is a ``torch.save`` of an ``OrderedDict`` state dict.

The unpickler is a whitelist: the tensor rebuild functions, the storage types, the
ordered dict and (TorchScript only) the ``__torch__`` module holder. Anything else
(arbitrary code in a pickle) is refused with one :class:`~edgecall.errors.ModelError`.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecall.errors import ModelError

#: torch storage type name -> numpy dtype of its raw bytes.
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class _Storage:
    """A torch storage type seen in a pickle: the dtype name it stands for."""

    def __init__(self, name: str) -> None:
        self.name = name


class _ScriptModule:
    """Stand-in for a TorchScript module class (``__torch__.*``): keeps its attributes."""

    def __setstate__(self, state: Any) -> None:
        """Keep the pickled attribute dict (or tuple) as ``__dict__``."""
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` on a numpy storage: a contiguous copy."""
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=[s * storage.itemsize for s in stride])
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a parameter is its data."""
    return data


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and refuses every other global."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, where: str) -> None:
        super().__init__(io.BytesIO(data))
        self._zip = archive
        self._prefix = prefix
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        """Map the few allowed globals; anything else is an error."""
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module.startswith("__torch__"):
            return _ScriptModule
        raise ModelError(f"{self._where}: refusing to unpickle {module}.{name} "
                         "(only torch tensors and state dicts are read)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        """``('storage', type, key, location, numel)`` -> the raw storage as numpy."""
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _Storage)):
            raise ModelError(f"{self._where}: unexpected persistent id {pid!r}")
        raw = self._zip.read(f"{self._prefix}data/{pid[2]}")
        arr = np.frombuffer(raw, dtype=np.dtype(STORAGE_DTYPES[pid[1].name]))
        if pid[1].name == "BFloat16Storage":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def _load_pickle(path: Path) -> Any:
    """Unpickle the ``data.pkl`` of a torch ZIP archive with the safe unpickler."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: not a torch zip archive ({exc})") from None
    with archive:
        pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ModelError(f"{path}: no data.pkl inside (not a torch-saved file)")
        prefix = pkl[: -len("data.pkl")]
        try:
            return _SafeUnpickler(archive.read(pkl), archive, prefix, str(path)).load()
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - any corrupt pickle is one clear error
            raise ModelError(f"{path}: cannot read tensor data "
                             f"({type(exc).__name__}: {exc})") from None


def load_tensor(path: str | Path) -> np.ndarray:
    """One dorado ``.tensor`` file (TorchScript module holding attribute ``"0"``) -> array."""
    obj = _load_pickle(Path(path))
    if isinstance(obj, np.ndarray):
        return obj
    value = getattr(obj, "__dict__", {}).get("0")
    if not isinstance(value, np.ndarray):
        raise ModelError(f"{path}: no tensor attribute '0' in the TorchScript module")
    return value


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``torch.save`` state dict (bonito ``weights_N.tar``) -> ``{key: array}``."""
    obj = _load_pickle(Path(path))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: not a state dict ({type(obj).__name__})")
    out = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not out:
        raise ModelError(f"{path}: state dict holds no tensors")
    return out


def load_tensor_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """Every ``*.tensor`` file of a dorado model folder, keyed by name without ``.tensor``."""
    files = sorted(Path(folder).glob("*.tensor"))
    return {p.name[: -len(".tensor")]: load_tensor(p) for p in files}
