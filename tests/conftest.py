"""Shared fixtures: the level-model test kit, simulated pod5 files and the real data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tests/modelkit.py
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # tools/ (the workstation package) for the simulator

import modelkit  # noqa: E402


def shared_data_dir() -> Path:
    """../shared/data beside the project, or $EDGECALL_SHARED_DATA."""
    env = os.environ.get("EDGECALL_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; skips the test when it is absent."""
    d = shared_data_dir()
    if not (d / "SOURCES.md").is_file():
        pytest.skip(f"real data not found at {d} (set EDGECALL_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the level model (known weights, R9.4.1, 4 kHz, stride 4)."""
    return modelkit.make_test_model(tmp_path_factory.mktemp("models") / "test_level_model")


@pytest.fixture(scope="session")
def coded_pod5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A pod5 whose reads the level model decodes to known sequences."""
    path = tmp_path_factory.mktemp("pod5") / "coded.pod5"
    seqs = modelkit.make_coded_pod5(path, 8, seed=1, min_len=80, max_len=400)
    return path, seqs


@pytest.fixture(scope="session")
def sim_pod5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A small simulated R9.4.1 pod5 (project simulator) and its true sequences."""
    try:
        from tools.simulate import make_fixture_pod5
    except ImportError as exc:
        pytest.skip(f"simulator not available: {exc}")
    path = tmp_path_factory.mktemp("sim") / "sim.pod5"
    seqs = make_fixture_pod5(path, n_reads=6, chemistry="r9.4.1", seed=0)
    return path, seqs
