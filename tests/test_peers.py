"""bench/peers.py: one run measures every contestant; its table, JSON and plot parse."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

pytestmark = [pytest.mark.tools, pytest.mark.realdata, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_peers_runs_on_a_tiny_slice(tmp_path: Path, shared_data: Path) -> None:
    peers = _peers()
    default = next(p.parent for p in sorted((ROOT / "models").glob("*/card.toml")))
    out = tmp_path / "peers"
    rc = peers.main(["--models", "teacher:rnn48", str(default), "--max-reads", "2",
                     "--threads", "1", "--seconds", "0.2", "--rounds", "1", "--out", str(out)])
    assert rc == 0
    rows = [line for line in (out / "peers.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| model")]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[0] == "deepnano-blitz rnn48" and cells[1] == "teacher"
    ident = float(cells[2].split()[0])
    assert 0.8 < ident <= 1.0  # rnn48 on E. coli reads: about 0.88
    assert cells[2].endswith("(2/2)")
    data = json.loads((out / "peers.json").read_text())
    assert [r["label"] for r in data["rows"]][0] == "deepnano-blitz rnn48"
    assert all(r["sps"]["1"] > 0 and r["macs"] > 0 and r["params"] > 0 for r in data["rows"])
    assert (out / "peers.png").stat().st_size > 1000
