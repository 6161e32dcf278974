"""Model cards: loading, the bundled-model registry, checksums and chemistry checks.

A model is a folder holding ``card.toml`` and the files it names. The device
only reads cards; ``tools`` writes them. Card layout (TOML)::

    name = "r941_dsc_v1"
    description = "..."
    default = true                 # default model for its chemistry
    [chemistry]
    pore = "r9.4.1"                # r9.4.1 | r10.4.1 | r10.4
    flow_cells = ["FLO-MIN106", "FLO-PRO002"]
    kits = []                      # empty = any kit
    sample_rate = 4000             # the rate the network was trained at
    accepted_sample_rates = [4000, 5000]   # others are resampled to sample_rate
    measured_sample_rates = [4000]
    [model]
    file = "model.onnx"            # fp32 ONNX, input "signal" [N,1,T], output [N,T/stride,C]
    alphabet = "NACGT"             # index 0 is the CTC blank
    stride = 3
    chunk_size = 3600
    overlap = 600
    output = "log_softmax"        # or "logits": log_softmax is applied by the decoder;
                                   # "crf_scores" for decoder = "crf"
    decoder = "ctc"                # "ctc" (default) or "crf" (imported dorado/bonito models)
    [model.crf]                    # required when decoder = "crf"
    state_len = 3                  # bases per CRF state: output C = 4**state_len * 5
    qscore_scale = 1.0             # per-base q = scale * q + bias (dorado config [qscore])
    qscore_bias = 0.0
    [model.variants]               # optional extra files, e.g. int8 = "model.int8.onnx"
    [normalisation]
    method = "median_mad"          # or "fixed" with shift/scale in pA
    clip = 0.0
    [architecture] ... free-form summary (params, macs_per_sample, ...)
    [files]                        # sha256 of every file
    "model.onnx" = "..."
    [accuracy.<dataset>]           # from tools evaluate
    median_identity = 0.9
    [training]
    command = "..."
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecall.errors import ChemistryMismatch, ModelError
from edgecall.signal import Normalisation
from edgecall.types import Read

#: Flow cell product codes per pore chemistry.
FLOW_CELLS: dict[str, tuple[str, ...]] = {
    "r9.4.1": ("FLO-MIN106", "FLO-MIN106D", "FLO-MIN107", "FLO-PRO002", "FLO-PRO002M",
               "FLO-FLG001", "FLO-PRO002-ECO"),
    "r10.4.1": ("FLO-MIN114", "FLO-PRO114", "FLO-PRO114M", "FLO-PRO114HD", "FLO-FLG114",
                "FLO-FLG114HD"),
    "r10.4": ("FLO-MIN112", "FLO-PRO112", "FLO-PRO112M", "FLO-FLG112"),
}


def models_dir() -> Path:
    """Where bundled models live: $EDGECALL_MODELS or the package's models/ folder."""
    env = os.environ.get("EDGECALL_MODELS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here / "bundled_models", here.parent / "models"):
        if cand.is_dir():
            return cand
    return here / "bundled_models"


@dataclass(frozen=True)
class CrfSpec:
    """The ``[model.crf]`` table: CRF state length and qscore calibration."""

    state_len: int
    qscore_scale: float = 1.0
    qscore_bias: float = 0.0

    @property
    def classes(self) -> int:
        """Scores per frame: 4**state_len states x (stay + 4 predecessors)."""
        return 4 ** self.state_len * 5


@dataclass(frozen=True)
class ModelCard:
    """A loaded model card; paths are resolved against the model folder."""

    name: str
    folder: Path
    pore: str
    flow_cells: tuple[str, ...]
    kits: tuple[str, ...]
    sample_rate: int
    accepted_sample_rates: tuple[int, ...]
    file: str
    alphabet: str
    stride: int
    chunk_size: int
    overlap: int
    output: str
    norm: Normalisation
    default: bool = False
    decoder: str = "ctc"
    crf: CrfSpec | None = None
    variants: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        """The main ONNX file (``[model] file``)."""
        return self.folder / self.file

    @property
    def precision(self) -> str:
        """Precision of the main file: ``int8`` for an INT8 (QDQ) model, else ``fp32``."""
        arch = self.raw.get("architecture", {})
        return "int8" if str(arch.get("precision", "fp32")).startswith("int8") else "fp32"

    @property
    def variant_names(self) -> list[str]:
        """The names ``--variant`` takes: the main file's precision, then the extra files."""
        return [self.precision, *(v for v in self.variants if v != self.precision)]

    def is_main(self, name: str) -> bool:
        """True if variant ``name`` is the main file: ``main`` (or ``""``), or the main
        file's precision (``fp32`` or ``int8``) unless ``[model.variants]`` has a file of
        that name."""
        return name not in self.variants and name in ("", "main", self.precision)

    def variant_path(self, name: str) -> Path:
        """Path of a named variant file (see :meth:`is_main`)."""
        if self.is_main(name):
            return self.onnx_path
        if name in self.variants:
            return self.folder / self.variants[name]
        raise ModelError(f"model {self.name}: no {name!r} variant "
                         f"(has: main/{', '.join(self.variant_names)})")

    @property
    def accuracy(self) -> dict[str, Any]:
        """Measured accuracy tables keyed by dataset name."""
        return dict(self.raw.get("accuracy", {}))


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Load ``card.toml`` from a model folder (or the card file itself)."""
    p = Path(path)
    card_file = p / "card.toml" if p.is_dir() else p
    if not card_file.is_file():
        raise ModelError(f"{card_file}: no model card (card.toml) found")
    try:
        raw = tomllib.loads(card_file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{card_file}: not a valid TOML model card: {exc}") from None
    try:
        return _card_from_dict(raw, card_file.parent)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{card_file}: bad model card: missing or invalid {exc}") from None


def _card_from_dict(raw: dict[str, Any], folder: Path) -> ModelCard:
    """Build a :class:`ModelCard` from parsed TOML."""
    chem, model, norm = raw["chemistry"], raw["model"], raw.get("normalisation", {})
    rate = int(chem["sample_rate"])
    card = ModelCard(
        name=str(raw["name"]), folder=folder, pore=str(chem["pore"]).lower(),
        flow_cells=tuple(chem.get("flow_cells", FLOW_CELLS.get(chem["pore"], ()))),
        kits=tuple(k.lower() for k in chem.get("kits", ())),
        sample_rate=rate,
        accepted_sample_rates=tuple(int(r) for r in chem.get("accepted_sample_rates", [rate])),
        file=str(model["file"]), alphabet=str(model.get("alphabet", "NACGT")),
        stride=int(model["stride"]), chunk_size=int(model["chunk_size"]),
        overlap=int(model["overlap"]), output=str(model.get("output", "log_softmax")),
        norm=Normalisation(method=str(norm.get("method", "median_mad")),
                           shift=float(norm.get("shift", 0.0)),
                           scale=float(norm.get("scale", 1.0)),
                           clip=float(norm.get("clip", 0.0))),
        default=bool(raw.get("default", False)),
        decoder=str(model.get("decoder", "ctc")), crf=_crf_spec(model),
        variants={str(k): str(v) for k, v in model.get("variants", {}).items()},
        files={str(k): str(v) for k, v in raw.get("files", {}).items()}, raw=raw)
    if card.decoder not in ("ctc", "crf"):
        raise ValueError(f"model.decoder ({card.decoder!r}: must be \"ctc\" or \"crf\")")
    outputs = ("crf_scores",) if card.decoder == "crf" else ("log_softmax", "logits")
    if card.output not in outputs:
        raise ValueError(f"model.output ({card.output!r}: decoder {card.decoder} needs "
                         f"{' or '.join(outputs)})")
    if card.decoder == "crf" and card.crf is None:
        raise ValueError("model.crf (decoder \"crf\" needs a [model.crf] table with state_len)")
    if card.decoder == "crf" and len(card.alphabet) != 5:
        raise ValueError(f"model.alphabet ({card.alphabet!r}: a CRF model calls 4 bases, "
                         "e.g. \"NACGT\")")
    return card


def _crf_spec(model: dict[str, Any]) -> CrfSpec | None:
    """The ``[model.crf]`` table, checked; None when absent."""
    if "crf" not in model:
        return None
    crf = model["crf"]
    if not isinstance(crf, dict):
        raise ValueError("model.crf (must be a table)")
    n = crf.get("state_len")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 7:
        raise ValueError(f"model.crf.state_len ({n!r}: must be an integer 1..7)")
    vals = {}
    for key, default in (("qscore_scale", 1.0), ("qscore_bias", 0.0)):
        v = crf.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"model.crf.{key} ({v!r}: must be a finite number)")
        vals[key] = float(v)
    return CrfSpec(state_len=n, **vals)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(card: ModelCard, file: str | None = None) -> None:
    """Check the sha256 of the card's model file(s); raise ModelError on mismatch."""
    names = [file] if file else list(card.files)
    for name in names:
        want = card.files.get(name)
        path = card.folder / name
        if not path.is_file():
            raise ModelError(f"model {card.name}: file {path} is missing")
        if want and sha256_file(path) != want:
            raise ModelError(f"model {card.name}: {path} does not match the sha256 in its card "
                             "(corrupt or modified file)")


def bundled() -> list[ModelCard]:
    """All bundled models (folders with a card.toml), sorted by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    cards = []
    for sub in sorted(root.iterdir()):
        if (sub / "card.toml").is_file():
            cards.append(load_card(sub))
    return cards


def resolve(spec: str | None) -> ModelCard | None:
    """A card from a name, a folder or a card path; ``None`` means pick by chemistry."""
    if not spec:
        return None
    p = Path(spec)
    if p.exists():
        return load_card(p)
    for card in bundled():
        if card.name == spec:
            return card
    names = ", ".join(c.name for c in bundled()) or "none bundled"
    raise ModelError(f"unknown model {spec!r} (bundled: {names}; or give a model folder)")


def pore_of(read: Read) -> str:
    """The pore chemistry of a read from its flow cell code ('' if unknown)."""
    fc = read.run.flow_cell_product_code.upper()
    for pore, codes in FLOW_CELLS.items():
        if fc in codes:
            return pore
    return ""


def select_for(read: Read) -> ModelCard:
    """The default bundled model for a read's chemistry (flow cell, kit, sample rate)."""
    pore = pore_of(read)
    cards = bundled()
    if not cards:
        raise ModelError("no trained model is bundled with this installation; "
                         "give one with --model PATH")
    matches = [c for c in cards if c.pore == pore and read.sample_rate in c.accepted_sample_rates]
    if not matches:
        have = "; ".join(f"{c.name} ({c.pore}, {'/'.join(map(str, c.accepted_sample_rates))} Hz)"
                         for c in cards)
        raise ChemistryMismatch(
            f"no bundled model for {pore or 'unknown chemistry'} "
            f"(flow cell {read.run.flow_cell_product_code or '?'}, {read.sample_rate} Hz); "
            f"bundled: {have}")
    defaults = [c for c in matches if c.default]
    return (defaults or matches)[0]


def check_compatible(card: ModelCard, read: Read) -> None:
    """Raise ChemistryMismatch if ``read`` cannot be called with ``card``."""
    pore = pore_of(read)
    if pore and pore != card.pore:
        raise ChemistryMismatch(
            f"read {read.read_id} is {pore} (flow cell {read.run.flow_cell_product_code}) "
            f"but model {card.name} is for {card.pore}")
    if read.sample_rate not in card.accepted_sample_rates:
        raise ChemistryMismatch(
            f"read {read.read_id} is sampled at {read.sample_rate} Hz but model {card.name} "
            f"accepts {', '.join(map(str, card.accepted_sample_rates))} Hz")


# --------------------------------------------------------------------------- writing cards

def _toml_value(v: object) -> str:
    """One TOML scalar or array."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def card_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A card (nested dict of scalars, arrays and tables) as TOML text.

    The one writer of ``card.toml``: training export, compression tools,
    benchmarks and test fixtures all go through it, and :func:`load_card` reads it.
    """
    lines = [f"{k if k.isidentifier() else json.dumps(k)} = {_toml_value(v)}"
             for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        if isinstance(v, dict):
            key = k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
            name = f"{prefix}.{key}" if prefix else key
            out += f"\n[{name}]\n" + card_toml(v, name)
    return out


def write_card_toml(folder: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as ``folder/card.toml`` (temp name + rename) and return the path."""
    path = Path(folder) / "card.toml"
    tmp = path.with_name(f".card.toml.{os.getpid()}.tmp")
    tmp.write_text(card_toml(data))
    os.replace(tmp, path)
    return path
