"""In-process tests of the service loop's failure handling, with stand-in basecallers.

The end-to-end behaviour with the real pipeline is in ``test_daemon.py``; these
cover what is awkward to provoke there: an engine that raises, a full output
disk, and choosing the model from the first file's chemistry.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import daemonkit as dk
import numpy as np
import pytest

from edgecall.daemon import files
from edgecall.daemon.service import ServeConfig, Service
from edgecall.daemon.systemd import Notifier
from edgecall.errors import EdgecallError
from edgecall.io.writer import open_writer
from edgecall.types import CalledRead, Failed, Read


def _called(r: Read) -> CalledRead:
    return CalledRead(read_id=r.read_id, sequence="ACGT", quality="IIII",
                      moves=np.zeros(4, np.uint8), stride=4, num_samples=r.num_samples,
                      trimmed_samples=0, mean_qscore=40.0, sample_rate=r.sample_rate)


class EchoCaller:
    """Calls every read 'ACGT'; raises on files whose name contains ``explode``."""

    def __init__(self, explode: str = "\0") -> None:
        self.explode = explode

    def call(self, reads: Iterable[Read | Failed]) -> Iterator[CalledRead | Failed]:
        for item in reads:
            if isinstance(item, Failed):
                yield item
            elif self.explode in item.path:
                raise RuntimeError("engine exploded")
            else:
                yield _called(item)


def _config(tmp_path: Path, **kw: Any) -> ServeConfig:
    base = dict(watch=tmp_path / "watch", output=tmp_path / "out", state=tmp_path / "state",
                model="stub", metrics_addr="off", poll_interval=0.02, settle=0.05, once=True)
    return ServeConfig(**{**base, **kw})  # type: ignore[arg-type]


def _service(cfg: ServeConfig, caller: Any, **kw: Any) -> Service:
    return Service(cfg, loader=kw.pop("loader", lambda c, p: (caller, "stub")),
                   notifier=Notifier({}), **kw)


def test_engine_error_exits_then_retries_then_quarantines(tmp_path: Path) -> None:
    """An unexpected error is not blamed on the input at once: exit (systemd restarts
    us), retry, and quarantine only after --max-crashes failures."""
    cfg = _config(tmp_path, max_crashes=2)
    inputs = dk.make_inputs(cfg.watch, {"explode.pod5": 2, "ok.pod5": 2, "ok2.pod5": 3})
    for attempt in (1, 2):
        with pytest.raises(EdgecallError, match="engine exploded.*exiting"):
            _service(cfg, EchoCaller("explode")).run()
        row = dk.journal(cfg.state)["explode.pod5"]
        assert (row["state"], row["crashes"]) == ("pending", attempt)
        assert not dk.temp_files(cfg.output)
    _service(cfg, EchoCaller("explode")).run()
    rows = dk.journal(cfg.state)
    assert rows["explode.pod5"]["state"] == "quarantined"
    assert "gave up after 2 failed attempts" in rows["explode.pod5"]["reason"]
    assert "RuntimeError: engine exploded" in rows["explode.pod5"]["reason"]
    assert rows["ok.pod5"]["state"] == rows["ok2.pod5"]["state"] == "done"
    assert set(dk.fastq_ids(cfg.output)) == inputs["ok.pod5"] | inputs["ok2.pod5"]


def test_full_output_disk_backs_off_and_retries(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    inputs = dk.make_inputs(cfg.watch, {"a.pod5": 3})
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    class FlakyWriter:
        def __init__(self, path: Path, fmt: str, model: str, cmd: str) -> None:
            self.inner = open_writer(path, fmt, model_name=model, command_line=cmd)

        def __enter__(self) -> FlakyWriter:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.inner.__exit__(*exc)

        def write(self, r: CalledRead) -> None:
            if failures:
                raise failures.pop()
            self.inner.write(r)

    svc = _service(cfg, EchoCaller(), writer=FlakyWriter)
    svc._backoff_seconds = 0.2  # type: ignore[attr-defined]
    svc.run()
    row = dk.journal(cfg.state)["a.pod5"]
    assert row["state"] == "done" and row["attempts"] == 2  # not quarantined: retried
    assert dk.fastq_ids(cfg.output) == dict.fromkeys(inputs["a.pod5"], 1)
    assert not dk.temp_files(cfg.output)


def test_model_chosen_from_first_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, model=None)
    dk.make_inputs(cfg.watch, {"a.pod5": 2, "b.pod5": 2})
    probes: list[Read | None] = []

    def loader(c: ServeConfig, probe: Read | None) -> tuple[EchoCaller, str]:
        probes.append(probe)
        return EchoCaller(), "picked"

    svc = _service(cfg, None, loader=loader)
    svc.run()
    assert len(probes) == 1 and isinstance(probes[0], Read)
    assert probes[0].run.flow_cell_product_code == "FLO-MIN106"
    assert svc.status()["model"] == "picked" and dk.states(cfg.state)["done"] == 2


def test_too_many_interruptions_quarantine_instead_of_looping(tmp_path: Path) -> None:
    from edgecall.daemon.journal import Journal, journal_path

    cfg = _config(tmp_path, max_interrupts=2)
    dk.make_inputs(cfg.watch, {"poison.pod5": 2, "fine.pod5": 2})
    with Journal(journal_path(cfg.state)) as j:
        st = (cfg.watch / "poison.pod5").stat()
        key = files.identify(cfg.watch / "poison.pod5").key
        j.add_pending(key, "poison.pod5", st.st_size, st.st_mtime_ns, 2)
        for _ in range(2):  # two crashes while it was running
            j.start(key)
            j.recover()
    _service(cfg, EchoCaller()).run()
    rows = dk.journal(cfg.state)
    assert rows["poison.pod5"]["state"] == "quarantined"
    assert "gave up after 2 interrupted attempts" in rows["poison.pod5"]["reason"]
    assert "killed or crashed" in rows["poison.pod5"]["reason"]
    assert rows["fine.pod5"]["state"] == "done"


def test_external_kills_do_not_count_as_crashes(tmp_path: Path) -> None:
    """Defect 8: --max-crashes 3 counted OOM kills / power cuts / kill -9 against the file
    in progress, so good files were quarantined for good after a few kills."""
    from edgecall.daemon.journal import Journal, journal_path

    cfg = _config(tmp_path, max_crashes=3)
    ids = dk.make_inputs(cfg.watch, {"good.pod5": 2})
    with Journal(journal_path(cfg.state)) as j:
        st = (cfg.watch / "good.pod5").stat()
        key = files.identify(cfg.watch / "good.pod5").key
        j.add_pending(key, "good.pod5", st.st_size, st.st_mtime_ns, 2)
        for _ in range(4):  # killed from outside four times while calling it
            j.start(key)
            j.recover()
    _service(cfg, EchoCaller()).run()
    row = dk.journal(cfg.state)["good.pod5"]
    assert (row["state"], row["crashes"], row["interrupts"]) == ("done", 0, 4)
    assert set(dk.fastq_ids(cfg.output)) == ids["good.pod5"]
