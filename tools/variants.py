"""The compressed variants that ``tools report`` builds from one FP32 parent.

Every variant is written under ``work/<parent>/`` as a model file
(``.onnx`` or ``.tflite``) and described by a :class:`tools.report.ModelFile`
(parameters, non-zero parameters, MACs/sample). Every fine-tuning stage uses the
same step budget ``steps`` and the same distillation target (the FP32 parent),
so the orderings of pruning and quantisation are compared at equal cost:

* ``P>D>PTQ``: structured prune, distil, post-training INT8;
* ``P>D>QAT``: structured prune, distil, quantisation-aware distillation;
* ``QAT>P>QAT``: QAT on the parent, structured prune, QAT again.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecall.models import ModelCard, load_card
from edgecall.signal import Normalisation
from tools.compress import (
    FoldedNet,
    count_nonzero,
    count_params,
    export_onnx,
    fold,
    load_chunks,
    load_student,
    macs_per_sample,
)
from tools.prune import mean_width, prune
from tools.quantize import export_qat, first_last, ptq, qat, qat_recipe, strip_fake_quant
from tools.report import ModelFile

log = logging.getLogger(__name__)

ALL = ("fp32", "unstructured50", "unstructured70", "unstructured85", "unstructured90",
       "structured30", "structured50", "delayed50", "ptq_minmax", "ptq_percentile",
       "ptq_entropy", "ptq_mixed", "ptq_s8s8", "qat", "P30>D>PTQ", "P30>D>QAT", "P>D>PTQ",
       "P>D>QAT", "QAT>P>QAT",
       "tflite_fp32", "tflite_int8", "tflite_int8_structured50")
QUICK = ("fp32", "unstructured70", "structured50", "ptq_minmax", "qat", "P>D>PTQ",
         "tflite_fp32", "tflite_int8")
TRAIN_LEN = 1200  # samples per fine-tuning/calibration chunk
CALIB_CHUNKS = 128  # chunks for PTQ / TFLite INT8 calibration
DISTIL_CHUNKS = 2048  # real chunks (card chunk size) the fine-tuning crops windows from
ITERATE_FROM = 0.3  # structured pruning beyond this goes through the 30 % student
#: onnxruntime's fast int8 path: U8S8 on x86 (S8S8 is slower than FP32 there), S8S8 on ARM
ACTIVATION = "uint8" if platform.machine().lower() in ("x86_64", "amd64") else "int8"


def parent_card(checkpoint: Path, card_dir: Path | None, *, pore: str = "r9.4.1",
                sample_rate: int = 4000) -> ModelCard:
    """The parent's model card, or a minimal one for a bare checkpoint."""
    if card_dir is not None:
        return load_card(card_dir)
    student, _ = load_student(checkpoint)
    stride = student.cfg.stride
    return ModelCard(name=checkpoint.parent.name or "student", folder=checkpoint.parent,
                     pore=pore, flow_cells=(), kits=(), sample_rate=sample_rate,
                     accepted_sample_rates=(sample_rate,), file="model.onnx", alphabet="NACGT",
                     stride=stride, chunk_size=(4000 // stride) * stride,
                     overlap=(400 // stride) * stride,  # tools export's defaults
                     output="log_softmax", norm=Normalisation("median_mad"))


def describe(name: str, technique: str, precision: str, path: Path, net: torch.nn.Module,
             stride: int) -> ModelFile:
    """A :class:`ModelFile` with the counts of ``net`` (the folded FP32 weights)."""
    return ModelFile(name, technique, precision, path, count_params(net), count_nonzero(net),
                     macs_per_sample(net, stride))


class Builder:
    """Builds variants on demand, caching shared intermediate students."""

    def __init__(self, parent: torch.nn.Module, card: ModelCard, chunks: np.ndarray,
                 work: Path, steps: int, batch: int, lr: float = 2e-3,
                 qat_steps: int | None = None) -> None:
        self.parent, self.card, self.work = parent.eval(), card, work
        self.chunks = chunks
        self.calib = np.ascontiguousarray(chunks[:CALIB_CHUNKS, :TRAIN_LEN])
        self.train = np.ascontiguousarray(chunks)  # distil() trains on random TRAIN_LEN crops
        self.steps, self.batch, self.lr = steps, batch, lr
        self.qat_steps = qat_steps or steps
        self.stride = card.stride
        self.teacher = fold(self.parent)
        self._pruned: dict[str, Any] = {}
        self.trained: dict[str, tuple[dict[str, Any], Any, str]] = {}  # config, net, tech
        work.mkdir(parents=True, exist_ok=True)

    def add_trained(self, label: str, checkpoint: Path) -> None:
        """A student trained elsewhere (e.g. a pruned student fine-tuned by ``tools train``).

        Its variants are ``<label>`` (FP32), ``<label>>PTQ``, ``<label>>QAT`` (distilled
        from the parent), ``<label>>QATr`` (QAT continuing the student's own training
        recipe: its training set, CTC + teacher KD) and ``tflite_int8_<label>``; the
        technique names its training from the checkpoint.
        """
        if not re.fullmatch(r"[A-Za-z][\w.-]*", label) or label in ALL:
            raise ValueError(f"--trained {label}=...: label must be a plain name, not a variant")
        student, meta = load_student(checkpoint)
        cfg = meta.get("config") or {}
        width = mean_width(student) / mean_width(self.parent)
        how = f"{cfg.get('run', checkpoint.parent.name)}: step {meta.get('step', '?')}, " \
              f"{float(meta.get('elapsed', 0)) / 3600:.1f} h tools train (CTC + KD alpha " \
              f"{cfg.get('kd_alpha', '?')})"
        tech = f"struct {round(100 * (1 - width))}% > {how}" if width < 0.999 else how
        self.trained[label] = (cfg, fold(student), tech)
        # provenance for the card of a default made from this student (tools report --apply)
        from tools.export import block_widths, training_record

        record = {"training": training_record(meta, self.card.raw.get("training", {}).get(
            "teacher", "")), "block_channels": block_widths(student), "checkpoint": str(
            checkpoint)}
        (self.work / f"{_safe(label)}.train.json").write_text(json.dumps(record, indent=1))

    def onnx(self, name: str, net: FoldedNet) -> Path:
        """Export a folded net as ``<name>.onnx``."""
        return export_onnx(net, self.work / f"{_safe(name)}.onnx", length=TRAIN_LEN,
                           check=self.calib[:16])

    def pruned(self, method: str, amount: float) -> Any:
        """A pruned + distilled student (cached by method/amount)."""
        key = f"{method}{amount}"
        if key not in self._pruned:
            log.info("pruning %s %.2f, %d steps", method, amount, self.steps)
            steps = self.steps * (2 if method == "delayed" else 1)
            start, stage = self.parent, amount
            if method == "structured" and amount > ITERATE_FROM:
                # iterative: prune -> distil to 30 %, then -> distil to ``amount``
                start = self.pruned("structured", ITERATE_FROM)
                stage = 1.0 - (1.0 - amount) * mean_width(self.parent) / mean_width(start)
            self._pruned[key] = prune(start, method, stage, teacher=self.parent,
                                      chunks=self.train, steps=steps, batch_size=self.batch,
                                      lr=self.lr)
        return self._pruned[key]

    def qat_net(self, folded: FoldedNet) -> FoldedNet:
        """A QAT copy of ``folded`` distilled from the parent for ``steps`` steps."""
        return qat(copy.deepcopy(folded), self.teacher, self.train, steps=self.qat_steps,
                   batch_size=self.batch, lr=self.lr / 4)

    def build(self, name: str) -> list[ModelFile]:
        """Build one named variant; returns its model file(s)."""
        fp32 = self.work / "fp32.onnx"
        if name == "fp32":
            return [describe("fp32", "parent", "fp32", self.onnx("fp32", self.teacher),
                             self.teacher, self.stride)]
        if name.startswith(("unstructured", "structured", "delayed")):
            method = name.rstrip("0123456789")
            amount = int(name[len(method):]) / 100
            net = fold(self.pruned(method, amount))
            steps = self.steps * (2 if method == "delayed" else 1)
            tech = f"{method} {int(amount * 100)}% + distil {steps}"
            if method == "structured" and amount > ITERATE_FROM:
                tech = f"structured 30% > distil > {int(amount * 100)}% > distil ({steps} each)"
            return [describe(name, tech, "fp32", self.onnx(name, net), net, self.stride)]
        if name.startswith("ptq_"):
            method = name[4:]
            self._need(fp32)
            excl = first_last(fp32) if method == "mixed" else []
            act = "int8" if method == "s8s8" else ACTIVATION
            calib = method if method in ("minmax", "percentile", "entropy") else "minmax"
            out = ptq(fp32, self.work / f"{name}.onnx", self.calib, method=calib, exclude=excl,
                      activation=act)
            tech = f"PTQ {calib} {'S8S8' if act == 'int8' else 'U8S8'}" + \
                (" (stem+head fp32)" if excl else "")
            return [describe(name, tech, "mixed" if excl else "int8", out, self.teacher,
                             self.stride)]
        if name == "qat":
            net = self.qat_net(self.teacher)
            out = export_qat(net, self.work / "qat.onnx", self.calib, length=TRAIN_LEN,
                             activation=ACTIVATION)
            return [describe(name, f"QAT {self.qat_steps}", "int8", out, self.teacher,
                             self.stride)]
        return self._orders_and_tflite(name)

    def _orders_and_tflite(self, name: str) -> list[ModelFile]:
        """Pruning/quantisation orderings and TFLite exports."""
        order = re.fullmatch(r"P(\d+)?>D>(PTQ|QAT)", name)
        if order:
            pct, quant = int(order.group(1) or 50), order.group(2)
            net = fold(self.pruned("structured", pct / 100))
            if quant == "PTQ":
                src = self.onnx(f"structured{pct}", net)
                out = ptq(src, self.work / f"{_safe(name)}.onnx", self.calib,
                          activation=ACTIVATION)
            else:
                net = self.qat_net(net)
                out = export_qat(net, self.work / f"{_safe(name)}.onnx", self.calib,
                                 length=TRAIN_LEN, activation=ACTIVATION)
                net = strip_fake_quant(net)
            return [describe(name, f"struct {pct}% > distil > {quant}", "int8", out, net,
                             self.stride)]
        if name == "QAT>P>QAT":
            return [self._qat_prune_qat(name)]
        trained = re.fullmatch(r"(?:tflite_int8_)?([^>]+)(?:>(PTQ|QAT|QATr))?", name)
        if trained and trained.group(1) in self.trained:
            return [self._trained(name, trained.group(1), trained.group(2))]
        if name.startswith("tflite_"):
            return [self._tflite(name)]
        raise ValueError(f"unknown variant {name!r} (choose from {', '.join(ALL)})")

    def _qat_prune_qat(self, name: str) -> ModelFile:
        """QAT the parent, prune the QAT weights by 50 %, QAT again (same budget per stage)."""
        from tools.prune import remove_channels, select_channels

        net = strip_fake_quant(self.qat_net(self.teacher))
        student = copy.deepcopy(self.parent)
        _load_folded_into(student, net)
        small = fold(remove_channels(student, select_channels(student, 0.5)))
        final = self.qat_net(small)
        out = export_qat(final, self.work / "QAT_P_QAT.onnx", self.calib, length=TRAIN_LEN,
                         activation=ACTIVATION)
        return describe(name, "QAT > struct 50% > QAT", "int8", out, strip_fake_quant(final),
                        self.stride)

    def _trained(self, name: str, label: str, quant: str | None) -> ModelFile:
        """FP32, PTQ, QAT or TFLite INT8 of a ``--trained`` student."""
        config, net, tech = self.trained[label]
        if name.startswith("tflite_int8_"):
            from tools.tflite_export import export_tflite

            out = export_tflite(net, self.work / f"{_safe(name)}.tflite", batch=self.batch,
                                length=self.card.chunk_size, int8=True,
                                chunks=self.chunks[:CALIB_CHUNKS // 2])
            return describe(name, f"full-integer {tech}", "int8", out, net, self.stride)
        if quant is None:
            return describe(name, tech, "fp32", self.onnx(label, net), net, self.stride)
        if quant == "PTQ":
            src = self.work / f"{_safe(label)}.onnx"
            if not src.is_file():
                self.onnx(label, net)
            out = ptq(src, self.work / f"{_safe(name)}.onnx", self.calib, activation=ACTIVATION)
            return describe(name, f"{tech} > PTQ", "int8", out, net, self.stride)
        if quant == "QATr":  # QAT continuing the student's own recipe (CTC + teacher KD)
            qnet = qat_recipe(copy.deepcopy(net), config, steps=self.qat_steps,
                              lr=self.lr / 8)
            how = f"QAT {self.qat_steps} (own recipe: CTC + KD)"
        else:
            qnet = self.qat_net(net)
            how = f"QAT {self.qat_steps}"
        out = export_qat(qnet, self.work / f"{_safe(name)}.onnx", self.calib, length=TRAIN_LEN,
                         activation=ACTIVATION)
        return describe(name, f"{tech} > {how}", "int8", out, strip_fake_quant(qnet),
                        self.stride)

    def _tflite(self, name: str) -> ModelFile:
        """TFLite FP32 / INT8 of the parent or of the structured-50 % student."""
        from tools.tflite_export import export_tflite

        int8 = "int8" in name
        pruned = re.search(r"structured(\d+)$", name)
        net = fold(self.pruned("structured", int(pruned.group(1)) / 100)) if pruned \
            else self.teacher
        out = export_tflite(net, self.work / f"{name}.tflite", batch=self.batch,
                            length=self.card.chunk_size, int8=int8,
                            chunks=self.chunks[:CALIB_CHUNKS // 2])
        tech = ("full-integer " if int8 else "") + (
            f"struct {pruned.group(1)}% > distil" if pruned else "parent")
        return describe(name, tech, "int8" if int8 else "fp32", out, net, self.stride)

    def _need(self, path: Path) -> None:
        """Make sure the FP32 ONNX parent exists."""
        if not path.is_file():
            self.build("fp32")


def _load_folded_into(student: Any, net: FoldedNet) -> None:
    """Give an unfolded student the folded weights (BatchNorm set to identity)."""
    pairs = [(student.stem, student.stem_bn, net.stem)]
    pairs += [(b.dw, b.dw_bn, d) for b, d in zip(student.blocks, net.dws, strict=True)]
    pairs += [(b.pw, b.bn, p) for b, p in zip(student.blocks, net.pws, strict=True)]
    with torch.no_grad():
        for conv, bn, src in pairs:
            conv.weight.copy_(src.weight)
            if isinstance(bn, torch.nn.BatchNorm1d):
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
                bn.bias.copy_(src.bias)
            elif conv.bias is not None:
                conv.bias.copy_(src.bias)
        student.head.weight.copy_(net.head.weight)
        student.head.bias.copy_(net.head.bias)


def _safe(name: str) -> str:
    """A file-name-safe variant name."""
    return name.replace(">", "_").replace(" ", "_")


def real_chunks(card: ModelCard, data: Sequence[str], exclude: set[str] | None) -> np.ndarray:
    """The (seeded, deterministic) real chunks every variant is tuned and calibrated on."""
    return load_chunks(data, chunk_size=card.chunk_size, max_chunks=DISTIL_CHUNKS,
                       sample_rate=card.sample_rate, norm=card.norm, exclude_reads=exclude,
                       pore=card.pore)


def save_files(files: list[ModelFile], path: Path, build_s: float) -> Path:
    """Write the built variants' descriptions (``tools report --build-only``)."""
    import json
    from dataclasses import asdict

    rows = [{**asdict(f), "path": str(f.path)} for f in files]
    path.write_text(json.dumps({"build_s": build_s, "files": rows}, indent=1))
    return path


def load_files(paths: Sequence[Path]) -> tuple[list[ModelFile], float]:
    """Variants built by several ``--build-only`` runs, in :data:`ALL` order; max build time."""
    import json

    seen: dict[tuple[str, str], ModelFile] = {}
    build_s = 0.0
    for p in paths:
        data = json.loads(Path(p).read_text())
        build_s = max(build_s, float(data["build_s"]))
        for f in data["files"]:
            mf = ModelFile(**{**f, "path": Path(f["path"])})
            seen.setdefault((mf.variant, mf.path.suffix), mf)
    order = {n: i for i, n in enumerate(ALL)}
    return sorted(seen.values(), key=lambda f: order.get(f.variant, len(order))), build_s


def build_all(checkpoint: Path, card: ModelCard, data: Sequence[str], *, work: Path,
              steps: int, qat_steps: int | None = None, which: str = "all",
              exclude: set[str] | None = None,
              threads: int = 2, batch: int = 16, lr: float = 2e-3,
              trained: dict[str, Path] | None = None) -> tuple[list[ModelFile], np.ndarray]:
    """Build the requested variants; returns their files and the real chunks used."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(0)
    names = ALL if which == "all" else QUICK if which == "quick" else \
        tuple(n.strip() for n in which.split(",") if n.strip())
    parent, _ = load_student(checkpoint)
    chunks = real_chunks(card, data, exclude)
    builder = Builder(parent, card, chunks, work / _safe(card.name), steps, batch, lr,
                      qat_steps)
    for label, path in (trained or {}).items():
        builder.add_trained(label, path)
        names = (*names, *[n for n in (label, f"{label}>PTQ", f"tflite_int8_{label}")
                           if n not in names])
    files: list[ModelFile] = []
    for name in ("fp32", *[n for n in names if n != "fp32"]):
        log.info("building variant %s", name)
        files += builder.build(name)
    return files, chunks
