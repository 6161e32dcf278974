"""Model-card updates from a compression report (``tools report --apply``).

* the FP32 parent's folder gains its compressed files as variants (``int8`` =
  PTQ QDQ ONNX, ``tflite`` / ``tflite_int8``) with their sha256 and a
  ``[compression]`` table pointing at the report;
* the chosen default - the fastest INT8 model within 1.0 pp median identity of
  the parent (:func:`tools.report.choose_default`) - gets its own folder
  ``<parent>_int8`` whose main file is that QDQ model; it becomes
  ``default = true`` and the parent ``default = false`` (still available by name).

Cards are read with ``tomllib`` and written with :func:`edgecall.models.write_card_toml`.
"""

from __future__ import annotations

import copy
import shutil
import tomllib
from pathlib import Path
from typing import Any

from edgecall.errors import ModelError
from edgecall.models import sha256_file, write_card_toml


def _read(folder: Path) -> dict[str, Any]:
    """The parsed card of a model folder."""
    path = folder / "card.toml"
    if not path.is_file():
        raise ModelError(f"{folder}: no card.toml to update")
    return tomllib.loads(path.read_text())


def _write(folder: Path, card: dict[str, Any]) -> Path:
    """Write ``card`` (files re-hashed) as the folder's card.toml."""
    card["files"] = {name: sha256_file(folder / name) for name in sorted(_files(card))}
    return write_card_toml(folder, card)


def _files(card: dict[str, Any]) -> set[str]:
    """Every file a card names (main file and variants)."""
    model = card.get("model", {})
    return {model["file"], *model.get("variants", {}).values()}


def add_variants(folder: Path, files: dict[str, Path], *, report: str,
                 summary: dict[str, Any]) -> Path:
    """Copy ``files`` (variant key -> file) into ``folder`` and list them in its card."""
    card = _read(folder)
    names = {"int8": "model.int8.onnx", "tflite": "model.tflite",
             "tflite_int8": "model.int8.tflite"}
    variants = dict(card.get("model", {}).get("variants", {}))
    for key, src in files.items():
        dst = names.get(key, f"model.{key}{src.suffix}")
        shutil.copyfile(src, folder / dst)
        variants[key] = dst
    card["model"]["variants"] = variants
    card["compression"] = {"report": report, **summary}
    return _write(folder, card)


def make_default(parent: Path, int8_model: Path, *, name: str, rows: dict[str, Any],
                 extra: dict[str, Path] | None = None) -> Path:
    """Create the ``name`` folder holding the default INT8 model; demote the parent.

    ``rows`` carries what the card records: ``technique``, ``rule`` (why it was chosen,
    :data:`tools.report.DEFAULT_RULE`), ``params``,
    ``macs_per_sample``, ``identity`` (per eval set), ``parent_identity``,
    ``onnx_sps``, ``parent_onnx_sps``, ``report``; a student trained after pruning
    adds ``training`` (its own ``[training]`` table) and ``block_channels``.
    """
    card = copy.deepcopy(_read(parent))
    folder = parent.parent / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(int8_model, folder / "model.int8.onnx")
    variants = {}
    for key, src in (extra or {}).items():
        dst = {"fp32": "model.onnx", "tflite_int8": "model.int8.tflite"}.get(
            key, f"model.{key}{src.suffix}")
        shutil.copyfile(src, folder / dst)
        variants[key] = dst  # "fp32": the unquantised student (main file is int8)
    card.update(name=name, default=True, description=(
        f"INT8 QDQ ({rows['technique']}) of {card['name']}: {rows['rule']} (tools report)"))
    card["model"]["file"] = "model.int8.onnx"
    card["model"]["variants"] = variants
    card.setdefault("architecture", {}).update(
        params=int(rows["params"]), macs_per_sample=float(rows["macs_per_sample"]),
        precision="int8 QDQ (per-channel symmetric 7-bit weights)",
        onnxruntime_samples_per_s=float(rows["onnx_sps"]),
        onnxruntime_threads=int(rows.get("threads", 1)))
    if rows.get("block_channels"):
        widths = [int(w) for w in rows["block_channels"]]
        card["architecture"].update(channels=max(widths), block_channels=widths)
    card["accuracy"] = {k: {"median_identity": v} for k, v in rows["identity"].items()}
    parent_training = card.get("training", {}).get("command", "")
    if rows.get("training"):
        card["training"] = dict(rows["training"])
    card["compression"] = {"parent_training": parent_training,
                           "parent_model": _read(parent)["name"],
                           "technique": rows["technique"], "report": rows["report"],
                           "parent_identity": rows["parent_identity"],
                           "parent_onnx_samples_per_s": rows["parent_onnx_sps"]}
    path = _write(folder, card)
    parent_card = _read(parent)
    parent_card["default"] = False
    _write(parent, parent_card)
    return path
