"""End-to-end tests of edgecall.pipeline with the level model (known weights)."""

from __future__ import annotations

import threading
from pathlib import Path

import modelkit
import numpy as np
import pysam
import pytest

from edgecall import models
from edgecall.errors import ChemistryMismatch, EdgecallError, ModelError
from edgecall.io.reader import iter_reads
from edgecall.pipeline import Basecaller, basecall
from edgecall.types import CalledRead, Failed


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_decodes_known_sequences_in_order(tmp_path: Path, tiny_model: Path,
                                          coded_pod5: tuple[Path, dict[str, str]],
                                          batch_size: int) -> None:
    path, seqs = coded_pod5
    out = tmp_path / "calls.fastq"
    summary = basecall([path], out, model=str(tiny_model), batch_size=batch_size)
    recs = list(pysam.FastxFile(str(out)))
    assert [r.name for r in recs] == list(seqs)
    assert [r.sequence for r in recs] == list(seqs.values())
    assert summary.reads == len(seqs) and not summary.failed
    assert summary.bases == sum(map(len, seqs.values()))
    assert summary.samples_per_s > 0 and summary.peak_rss_mb > 10


def test_moves_and_stride_line_up(tiny_model: Path,
                                  coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    bc = Basecaller.load(str(tiny_model), batch_size=8)
    called = [c for c in bc.call(iter_reads([path])) if isinstance(c, CalledRead)]
    for c in called:
        assert c.stride == 4 and int(c.moves.sum()) == len(c.sequence)
        assert c.moves.shape[0] == c.num_samples // 4
        assert len(c.quality) == len(c.sequence) and 0 < c.mean_qscore <= 50
    assert bc.stats.reads == len(seqs) and bc.stats.chunks >= len(seqs)
    assert len(bc.stats.batch_latencies) == len(bc.stats.batch_sizes) > 0


def test_chunk_size_and_overlap_do_not_change_calls(tmp_path: Path, tiny_model: Path,
                                                   coded_pod5: tuple[Path, dict[str, str]]
                                                   ) -> None:
    path, seqs = coded_pod5
    for chunk, overlap in ((200, 40), (1200, 400)):
        out = tmp_path / f"c{chunk}.fastq"
        basecall([path], out, model=str(tiny_model), chunk_size=chunk, overlap=overlap)
        assert [r.sequence for r in pysam.FastxFile(str(out))] == list(seqs.values())
    with pytest.raises(ModelError, match="multiples of the model stride"):
        basecall([path], tmp_path / "x.fastq", model=str(tiny_model), chunk_size=201)


def test_resamples_5khz_reads_for_a_4khz_model(tmp_path: Path) -> None:
    model = modelkit.make_test_model(tmp_path / "m", accepted=(4000, 5000))
    rng = np.random.default_rng(3)
    seq = modelkit.random_seq(rng, 120)
    sig4 = modelkit.encode(seq, rng, min_frames=4, max_frames=6, noise=0.3)
    sig5 = np.interp(np.arange(int(sig4.size * 1.25)) / 1.25, np.arange(sig4.size), sig4)
    rid = "00000000-0000-0000-0000-000000000005"
    modelkit.write_pod5(tmp_path / "r5.pod5", {rid: sig5.astype(np.float32)},
                        sample_rate=5000, flow_cell="FLO-MIN106")
    out = tmp_path / "calls.sam"
    basecall([tmp_path / "r5.pod5"], out, model=str(model))
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        (rec,) = list(f.fetch(until_eof=True))
    assert rec.query_sequence == seq
    assert rec.get_tag("ns") == sig5.size and rec.get_tag("mv")[0] == 5  # 4 * 5000/4000


def test_wrong_sample_rate_and_chemistry(tmp_path: Path, tiny_model: Path) -> None:
    rng = np.random.default_rng(4)
    sig = modelkit.encode(modelkit.random_seq(rng, 50), rng)
    modelkit.write_pod5(tmp_path / "r5k.pod5", {"00000000-0000-0000-0000-000000000001": sig},
                        sample_rate=5000)
    modelkit.write_pod5(tmp_path / "r10.pod5", {"00000000-0000-0000-0000-000000000002": sig},
                        flow_cell="FLO-PRO114M")
    s = basecall([tmp_path / "r5k.pod5", tmp_path / "r10.pod5"], tmp_path / "o.fastq",
                 model=str(tiny_model))
    assert s.reads == 0 and len(s.failed) == 2
    assert "5000 Hz" in s.failed[0].reason and "r5k.pod5" in s.failed[0].reason
    assert "r10.4.1" in s.failed[1].reason and "r10.pod5" in s.failed[1].reason
    card = models.load_card(tiny_model)
    first = next(iter_reads([tmp_path / "r10.pod5"]))
    with pytest.raises(ChemistryMismatch):
        models.check_compatible(card, first)  # type: ignore[arg-type]


def test_short_reads_fail_with_a_reason(tmp_path: Path, tiny_model: Path,
                                        coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    rng = np.random.default_rng(5)
    modelkit.write_pod5(tmp_path / "short.pod5",
                        {"00000000-0000-0000-0000-0000000000aa": rng.normal(0, 1, 300)})
    s = basecall([tmp_path / "short.pod5", path], tmp_path / "o.fastq", model=str(tiny_model))
    assert s.reads == len(seqs) and len(s.failed) == 1
    assert "300 samples" in s.failed[0].reason and "short.pod5" in s.failed[0].reason
    s2 = basecall([tmp_path / "short.pod5"], tmp_path / "o2.fastq", model=str(tiny_model),
                  min_samples=100)
    assert s2.reads == 1 and not s2.failed  # shorter than one chunk: padded and called


def test_bad_file_among_good_ones(tmp_path: Path, tiny_model: Path,
                                  coded_pod5: tuple[Path, dict[str, str]]) -> None:
    bad = tmp_path / "bad.pod5"
    bad.write_text("not a pod5 file\n")
    s = basecall([bad, coded_pod5[0]], tmp_path / "o.bam", model=str(tiny_model))
    assert s.reads == len(coded_pod5[1]) and [f.read_id for f in s.failed] == [""]
    assert s.bad_files and "bad.pod5" in s.bad_files[0].reason


def test_engine_error_reaches_the_caller(tiny_model: Path,
                                         coded_pod5: tuple[Path, dict[str, str]]) -> None:
    bc = Basecaller.load(str(tiny_model))

    class Broken:
        name = "broken"

        def run(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("engine exploded")

    bc.engine = Broken()
    with pytest.raises(RuntimeError, match="engine exploded"):
        list(bc.call(iter_reads([coded_pod5[0]])))
    assert threading.active_count() < 10  # workers did not pile up


def test_early_close_stops_workers(tiny_model: Path,
                                   coded_pod5: tuple[Path, dict[str, str]]) -> None:
    bc = Basecaller.load(str(tiny_model), batch_size=1)
    before = threading.active_count()
    gen = bc.call(iter_reads([coded_pod5[0]] * 20))
    first = next(gen)
    assert isinstance(first, CalledRead)
    gen.close()
    assert threading.active_count() <= before


def test_failed_records_pass_through(tiny_model: Path) -> None:
    bc = Basecaller.load(str(tiny_model))
    out = list(bc.call([Failed("x.pod5", "r1", "x.pod5: boom")]))
    assert out == [Failed("x.pod5", "r1", "x.pod5: boom")] and bc.stats.failed == 1


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    model = modelkit.make_test_model(tmp_path / "m")
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"x")
    with pytest.raises(ModelError, match="sha256"):
        Basecaller.load(str(model))


def test_no_bundled_model_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  coded_pod5: tuple[Path, dict[str, str]]) -> None:
    monkeypatch.setenv("EDGECALL_MODELS", str(tmp_path / "empty"))
    with pytest.raises(EdgecallError, match="no trained model is bundled"):
        basecall([coded_pod5[0]], tmp_path / "o.fastq")


def test_chemistry_picks_the_bundled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           coded_pod5: tuple[Path, dict[str, str]]) -> None:
    modelkit.make_test_model(tmp_path / "lib" / "r10_model", pore="r10.4.1", name="r10_model")
    modelkit.make_test_model(tmp_path / "lib" / "r9_model", pore="r9.4.1", name="r9_model")
    monkeypatch.setenv("EDGECALL_MODELS", str(tmp_path / "lib"))
    s = basecall([coded_pod5[0]], tmp_path / "o.fastq")
    assert s.model == "r9_model" and s.reads == len(coded_pod5[1])
