"""Model cards: parsing, errors, chemistry selection."""

from __future__ import annotations

from pathlib import Path

import modelkit
import numpy as np
import pytest

from edgecall import models
from edgecall.errors import ChemistryMismatch, ModelError
from edgecall.types import Read, RunMeta


def _read(fc: str, rate: int) -> Read:
    return Read("r", np.zeros(10, np.int16), 0.0, 1.0, rate,
                run=RunMeta(flow_cell_product_code=fc, sample_rate=rate))


def test_card_fields(tmp_path: Path) -> None:
    card = models.load_card(modelkit.make_test_model(tmp_path / "m", stride=4))
    assert card.stride == 4 and card.alphabet == "NACGT" and card.pore == "r9.4.1"
    assert card.norm.method == "fixed" and card.onnx_path.is_file()
    models.verify(card)
    with pytest.raises(ModelError, match="no 'int8' variant"):
        card.variant_path("int8")


def test_variant_names_follow_the_main_files_precision(tmp_path: Path) -> None:
    """An INT8 default model: main/int8 is its own file, fp32 the unquantised one."""
    import shutil
    import tomllib

    folder = modelkit.make_test_model(tmp_path / "m")
    raw = tomllib.loads((folder / "card.toml").read_text())
    shutil.copyfile(folder / "model.onnx", folder / "model.int8.onnx")
    raw["model"].update(file="model.int8.onnx", variants={"fp32": "model.onnx",
                                                          "tflite_int8": "model.int8.tflite"})
    raw.setdefault("architecture", {})["precision"] = "int8 QDQ (per-channel)"
    models.write_card_toml(folder, raw)
    card = models.load_card(folder)
    assert card.precision == "int8" and card.variant_names == ["int8", "fp32", "tflite_int8"]
    for name in ("main", "", "int8"):
        assert card.variant_path(name) == folder / "model.int8.onnx"
    assert card.variant_path("fp32") == folder / "model.onnx"
    assert card.is_main("main") and card.is_main("int8") and not card.is_main("fp32")
    with pytest.raises(ModelError,
                       match=r"no 'fp16' variant \(has: main/int8, fp32, tflite_int8\)"):
        card.variant_path("fp16")
    from edgecall.engines.tflite import tflite_path

    (folder / "model.int8.tflite").write_bytes(b"")  # path resolution only
    assert tflite_path(card, "main") == tflite_path(card, "int8") == folder / "model.int8.tflite"
    fp32 = models.load_card(modelkit.make_test_model(tmp_path / "f"))
    assert fp32.precision == "fp32" and fp32.variant_names == ["fp32"]
    assert fp32.variant_path("main") == fp32.variant_path("fp32") == fp32.onnx_path


def test_bad_cards(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model card"):
        models.load_card(tmp_path)
    (tmp_path / "card.toml").write_text("name = [")
    with pytest.raises(ModelError, match="not a valid TOML"):
        models.load_card(tmp_path)
    (tmp_path / "card.toml").write_text('name = "x"\n[model]\nfile = "m.onnx"\n')
    with pytest.raises(ModelError, match="missing or invalid 'chemistry'"):
        models.load_card(tmp_path)


def test_pore_of_and_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.pore_of(_read("FLO-MIN106", 4000)) == "r9.4.1"
    assert models.pore_of(_read("FLO-PRO114M", 5000)) == "r10.4.1"
    assert models.pore_of(_read("", 4000)) == ""
    modelkit.make_test_model(tmp_path / "r10", pore="r10.4.1", name="r10",
                             sample_rate=5000, accepted=(4000, 5000))
    monkeypatch.setenv("EDGECALL_MODELS", str(tmp_path))
    assert models.select_for(_read("FLO-PRO114M", 4000)).name == "r10"
    with pytest.raises(ChemistryMismatch, match="no bundled model for r9.4.1"):
        models.select_for(_read("FLO-MIN106", 4000))
    assert models.resolve("r10").name == "r10"
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        models.resolve("nope")


def test_card_writer_round_trips_through_tomllib(tmp_path):
    """The one card writer: nested tables, quoted keys, bools, floats, arrays survive."""
    import tomllib

    from edgecall.models import write_card_toml

    card = {"name": "x", "default": False, "description": 'says "hi"\nand more',
            "chemistry": {"pore": "r10.4.1", "accepted_sample_rates": [4000, 5000]},
            "model": {"stride": 4, "variants": {"int8": "model.int8.onnx"}},
            "files": {"model.onnx": "ab" * 32, "model.int8.onnx": "cd" * 32},
            "accuracy": {"set.one": {"median_identity": 0.81009, "data": ["a.pod5"]}}}
    path = write_card_toml(tmp_path, card)
    assert path == tmp_path / "card.toml"
    assert tomllib.loads(path.read_text()) == card
    assert [p.name for p in tmp_path.iterdir()] == ["card.toml"]  # no temp file left


def test_shipped_models_are_verified_trained_and_one_default_per_chemistry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model in models/ loads, matches its checksums, carries measured accuracy and
    training provenance, and each chemistry has at most one default."""
    monkeypatch.delenv("EDGECALL_MODELS", raising=False)
    import tomllib

    cards = models.bundled()
    assert cards, "models/ ships no model"
    defaults: dict[str, list[str]] = {}
    for card in cards:
        models.verify(card)
        raw = tomllib.loads((card.folder / "card.toml").read_text())
        assert raw["training"]["command"] and raw["training"]["trained_seconds"] > 0, card.name
        ids = [v["median_identity"] for v in raw["accuracy"].values()]
        assert ids and max(ids) > 0.5, f"{card.name}: no measured identity"
        if card.default:
            defaults.setdefault(card.pore, []).append(card.name)
    assert all(len(v) == 1 for v in defaults.values()), defaults
