"""Tests for edgecall.io: pod5 reading, bad-input detection, FASTQ/SAM/BAM writing."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pysam
import pytest

from edgecall.errors import InputError
from edgecall.io import reader, writer
from edgecall.types import CalledRead, Failed, Read, RunMeta


def _called(i: int, n: int = 12) -> CalledRead:
    rng = np.random.default_rng(i)
    seq = "".join(rng.choice(list("ACGT"), n))
    qual = "".join(chr(33 + int(q)) for q in rng.integers(2, 40, n))
    moves = np.zeros(3 * n, np.uint8)
    moves[::3] = 1
    return CalledRead(read_id=f"read-{i}", sequence=seq, quality=qual, moves=moves, stride=5,
                      num_samples=15 * n, trimmed_samples=0, mean_qscore=12.5 + i,
                      sample_rate=4000, channel=7 + i, read_number=i, start_sample=100 * i,
                      run=RunMeta())


@pytest.mark.parametrize("ext", [".fastq", ".fastq.gz", ".sam", ".bam"])
def test_round_trip(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"calls{ext}"
    reads = [_called(i, 10 + i) for i in range(5)]
    with writer.open_writer(out, model_name="m1", sample_rate=4000, command_line="edgecall x") as w:
        for r in reads:
            w.write(r)
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    if ext.startswith(".fastq"):
        recs = list(pysam.FastxFile(str(out)))
        assert [r.name for r in recs] == [r.read_id for r in reads]
        assert [r.sequence for r in recs] == [r.sequence for r in reads]
        assert [r.quality for r in recs] == [r.quality for r in reads]
        assert "qs:f:12.5\t" in recs[0].comment and recs[0].comment.endswith("RG:Z:m1")
        if ext.endswith(".gz"):
            assert gzip.open(out).read(1) == b"@"
        return
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        hdr = f.header.to_dict()
        assert hdr["RG"][0]["ID"] == "m1" and "basecall_model=m1" in hdr["RG"][0]["DS"]
        assert hdr["PG"][0]["PN"] == "edgecall" and hdr["PG"][0]["CL"] == "edgecall x"
        got = list(f.fetch(until_eof=True))
    assert [g.query_name for g in got] == [r.read_id for r in reads]
    for g, r in zip(got, reads, strict=True):
        assert g.is_unmapped and g.query_sequence == r.sequence
        assert pysam.qualities_to_qualitystring(g.query_qualities) == r.quality
        assert g.get_tag("qs") == pytest.approx(r.mean_qscore)
        assert g.get_tag("ns") == r.num_samples and g.get_tag("ts") == 0
        mv = list(g.get_tag("mv"))
        assert mv[0] == r.stride and mv[1:] == r.moves.tolist()
        assert sum(mv[1:]) == len(r.sequence)
        assert g.get_tag("RG") == "m1" and g.get_tag("ch") == r.channel


def test_interrupted_write_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "calls.bam"
    with pytest.raises(RuntimeError):
        with writer.open_writer(out, model_name="m") as w:
            w.write(_called(0))
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_output_survives_interrupted_rewrite(tmp_path: Path) -> None:
    out = tmp_path / "calls.fastq"
    out.write_text("previous complete file\n")
    with pytest.raises(KeyboardInterrupt):
        with writer.open_writer(out, model_name="m") as w:
            w.write(_called(0))
            raise KeyboardInterrupt
    assert out.read_text() == "previous complete file\n"


def test_bad_extension_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="extension"):
        writer.open_writer(tmp_path / "calls.txt", model_name="m")
    with pytest.raises(InputError, match="does not exist"):
        writer.open_writer(tmp_path / "nope" / "calls.fastq", model_name="m")
    assert writer.format_for(tmp_path / "x.txt", "sam") == ("sam", False)


def test_reads_coded_pod5(coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    items = list(reader.iter_reads([path]))
    assert all(isinstance(r, Read) for r in items)
    assert [r.read_id for r in items] == list(seqs)
    r = items[0]
    assert r.sample_rate == 4000 and r.run.flow_cell_product_code == "FLO-MIN106"
    assert r.signal.dtype == np.int16 and r.channel == 1
    assert reader.check_pod5(path) == len(seqs)


def test_read_ids_and_max_reads(coded_pod5: tuple[Path, dict[str, str]]) -> None:
    path, seqs = coded_pod5
    want = set(list(seqs)[2:5])
    got = [r.read_id for r in reader.iter_reads([path], read_ids=want)]
    assert set(got) == want
    assert len(list(reader.iter_reads([path, path], max_reads=10))) == 10


def test_find_pod5(tmp_path: Path, coded_pod5: tuple[Path, dict[str, str]]) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(coded_pod5[0], tmp_path / "a" / "x.pod5")
    shutil.copy(coded_pod5[0], tmp_path / "a" / "b" / "y.pod5")
    assert [p.name for p in reader.find_pod5([tmp_path / "a"])] == ["x.pod5"]
    assert len(reader.find_pod5([tmp_path / "a"], recursive=True)) == 2
    with pytest.raises(InputError, match="no such file"):
        reader.find_pod5([tmp_path / "missing.pod5"])


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"empty": tmp_path / "empty.pod5", "text": tmp_path / "text.pod5",
             "truncated": tmp_path / "truncated.pod5", "corrupt": tmp_path / "corrupt.pod5"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("@read\nACGT\n+\n!!!!\n")
    files["truncated"].write_bytes(data[: len(data) // 2])
    mid = bytearray(data)
    mid[len(mid) // 2: len(mid) // 2 + 2048] = b"\xff" * 2048
    files["corrupt"].write_bytes(bytes(mid))
    return files


def test_bad_files_are_reported_not_fatal(tmp_path: Path,
                                          coded_pod5: tuple[Path, dict[str, str]]) -> None:
    bad = _bad_files(tmp_path, coded_pod5[0])
    for kind in ("empty", "text", "truncated"):
        items = list(reader.iter_reads([bad[kind], coded_pod5[0]]))
        assert isinstance(items[0], Failed) and str(bad[kind]) in items[0].reason
        assert sum(isinstance(i, Read) for i in items) == len(coded_pod5[1])
        with pytest.raises(InputError, match=str(bad[kind].name)):
            reader.check_pod5(bad[kind])
    items = list(reader.iter_reads([bad["corrupt"]]))
    assert any(isinstance(i, Failed) for i in items)
    assert all(str(bad["corrupt"]) in i.reason for i in items if isinstance(i, Failed))
    with pytest.raises(InputError, match="corrupt"):
        reader.check_pod5(bad["corrupt"])
    with pytest.raises(InputError, match="truncated"):
        reader.check_pod5(bad["truncated"])
    with pytest.raises(InputError, match="not a pod5"):
        reader.check_pod5(bad["text"])


@pytest.mark.realdata
def test_real_pod5_files(shared_data: Path) -> None:
    files = reader.find_pod5([shared_data], recursive=True)
    assert len(files) >= 10
    n = 0
    for item in reader.iter_reads(files):
        assert isinstance(item, Read), getattr(item, "reason", "")
        assert item.sample_rate in (4000, 5000) and item.num_samples > 0
        pa = item.signal_pa()
        assert 20 < float(np.median(pa)) < 200, item.read_id  # open-pore/strand current in pA
        n += 1
    assert n > 150
    ecoli = next(reader.iter_reads([shared_data / "r9.4.1/ecoli/reads.pod5"]))
    assert ecoli.run.flow_cell_product_code == "FLO-MIN106" and ecoli.sample_rate == 4000


# -- dorado's SAM specification --------------------------------------------------------------
def _call_bam(model: Path, pods: list[Path], out: Path, **kw: object) -> Path:
    from edgecall.pipeline import basecall

    basecall(pods, out, model=str(model), command_line="edgecall basecall x.pod5", **kw)
    return out


def test_bam_meets_dorado_spec(tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]],
                               tmp_path: Path) -> None:
    import dorado_sam

    path, seqs = coded_pod5
    out = _call_bam(tiny_model, [path], tmp_path / "calls.bam", emit_moves=True)
    assert dorado_sam.check_file(out) == []
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        (rg,) = f.header.to_dict()["RG"]
        recs = list(f.fetch(until_eof=True))
    assert rg == {"ID": "edgecall-test-run_test_level_model", "PU": "FAK00000", "PM": "MN00000",
                  "DT": "2026-01-01T00:00:00.000+00:00", "PL": "ONT", "LB": "sample",
                  "SM": "sample", "DS": "runid=edgecall-test-run basecall_model=test_level_model"}
    by_id = {r.read_id: r for r in reader.iter_reads([path])}
    for rec in recs:
        raw = by_id[rec.query_name]
        secs = raw.start_sample / raw.sample_rate  # modelkit: start_sample = 1000 * i
        assert rec.get_tag("st") == f"2026-01-01T00:00:{secs:06.3f}+00:00"
        assert rec.get_tag("du") == pytest.approx(raw.num_samples / 4000)
        assert rec.get_tag("fn") == "coded.pod5" and rec.get_tag("mx") == raw.well == 1
        assert rec.get_tag("ch") == raw.channel and rec.get_tag("rn") == raw.read_number
        # the level model standardises with fixed pA shift 0 / scale 1 (dorado's "pa")
        assert (rec.get_tag("sm"), rec.get_tag("sd"), rec.get_tag("sv")) == (0.0, 1.0, "pa")
        assert rec.get_tag("RG") == rg["ID"]
    assert [r.query_sequence for r in recs] == list(seqs.values())


def test_scaling_tags_carry_the_reads_median_and_mad(
        tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    import dataclasses

    from edgecall import models
    from edgecall.pipeline import basecall
    from edgecall.signal import Normalisation

    card = models.resolve(str(tiny_model))
    card = dataclasses.replace(card, norm=Normalisation("median_mad"))
    out = tmp_path / "mad.sam"
    basecall([coded_pod5[0]], out, model=card, max_reads=3)
    by_id = {r.read_id: r for r in reader.iter_reads([coded_pod5[0]])}
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        for rec in f.fetch(until_eof=True):
            pa = by_id[rec.query_name].signal_pa()
            med = float(np.median(pa))
            assert rec.get_tag("sm") == pytest.approx(med, rel=1e-5)
            assert rec.get_tag("sd") == pytest.approx(
                1.4826 * float(np.median(np.abs(pa - med))), rel=1e-5)
            assert rec.get_tag("sv") == "med_mad"


def test_moves_only_when_asked(tiny_model: Path, coded_pod5: tuple[Path, dict[str, str]],
                               tmp_path: Path) -> None:
    import dorado_sam

    out = _call_bam(tiny_model, [coded_pod5[0]], tmp_path / "c.sam", emit_moves=False,
                    max_reads=2)
    assert dorado_sam.check_file(out) == []
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        assert not any(r.has_tag("mv") for r in f.fetch(until_eof=True))


def test_fastq_header_has_the_same_tags(tiny_model: Path, tmp_path: Path,
                                        coded_pod5: tuple[Path, dict[str, str]]) -> None:
    bam = _call_bam(tiny_model, [coded_pod5[0]], tmp_path / "c.bam", emit_moves=True)
    fq = _call_bam(tiny_model, [coded_pod5[0]], tmp_path / "c.fastq", emit_moves=True)
    with pysam.AlignmentFile(str(bam), check_sq=False) as f:
        want = {r.query_name: r.to_string().split("\t")[11:] for r in f.fetch(until_eof=True)}
    got = {r.name: r.comment.split("\t") for r in pysam.FastxFile(str(fq))}
    assert got == want  # what `samtools fastq -T '*'` would print


def test_two_runs_merge_and_split_back_by_read_group(tiny_model: Path, tmp_path: Path) -> None:
    import datetime

    import modelkit

    ids: dict[str, set[str]] = {}
    bams = []
    for k, run in enumerate(("run-a", "run-b")):
        pod = tmp_path / f"{run}.pod5"
        seqs = modelkit.make_coded_pod5(pod, 3, seed=10 + k, min_len=60, max_len=120,
                                        run_id=run, started=datetime.datetime(
                                            2026, 2, 1 + k, tzinfo=datetime.UTC))
        ids[f"{run}_test_level_model"] = set(seqs)
        bams.append(str(_call_bam(tiny_model, [pod], tmp_path / f"{run}.bam")))
    merged = tmp_path / "merged.bam"
    pysam.merge("-f", str(merged), *bams)
    with pysam.AlignmentFile(str(merged), check_sq=False) as f:
        assert {rg["ID"] for rg in f.header.to_dict()["RG"]} == set(ids)
    for rg, want in ids.items():
        part = tmp_path / f"{rg}.bam"
        pysam.view("-b", "-r", rg, "-o", str(part), str(merged), catch_stdout=False)
        with pysam.AlignmentFile(str(part), check_sq=False) as f:
            assert {r.query_name for r in f.fetch(until_eof=True)} == want
    # and one run over both files writes both read groups, each read pointing to its run
    both = _call_bam(tiny_model, [tmp_path / "run-a.pod5", tmp_path / "run-b.pod5"],
                     tmp_path / "both.bam")
    with pysam.AlignmentFile(str(both), check_sq=False) as f:
        assert len(f.header.to_dict()["RG"]) == 2
        got = {r.query_name: r.get_tag("RG") for r in f.fetch(until_eof=True)}
    assert got == {rid: rg for rg, rids in ids.items() for rid in rids}


def test_min_qscore_fail_companion(tmp_path: Path) -> None:
    out = tmp_path / "calls.fastq.gz"
    reads = [_called(i) for i in range(5)]  # qs 12.5 .. 16.5
    with writer.open_writer(out, model_name="m", min_qscore=14.0) as w:
        kept = [w.write(r) for r in reads]
    assert kept == [False, False, True, True, True]
    assert [r.name for r in pysam.FastxFile(str(out))] == ["read-2", "read-3", "read-4"]
    fail = tmp_path / "calls_fail.fastq.gz"
    assert [r.name for r in pysam.FastxFile(str(fail))] == ["read-0", "read-1"]
    with pytest.raises(InputError, match="--force"):
        writer.open_writer(out, model_name="m", overwrite=False)
    (tmp_path / "new_fail.bam").touch()
    with pytest.raises(InputError, match="new_fail.bam"):
        writer.open_writer(tmp_path / "new.sam", model_name="m", overwrite=False,
                           min_qscore=1, fail_output=tmp_path / "new_fail.bam")
    assert writer.fail_path(Path("a/x.sam")) == Path("a/x_fail.sam")


@pytest.mark.realdata
def test_shared_r941_reads_meet_dorado_spec(shared_data: Path, tmp_path: Path) -> None:
    import dorado_sam

    from edgecall.pipeline import basecall

    out = tmp_path / "ecoli.bam"
    basecall([shared_data / "r9.4.1" / "ecoli" / "reads.pod5"], out, max_reads=3,
             emit_moves=True, command_line="edgecall basecall reads.pod5")
    assert dorado_sam.check_file(out) == []
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        (rg,) = f.header.to_dict()["RG"]
        recs = list(f.fetch(until_eof=True))
    assert rg["ID"].startswith("0cc960b63c07619b4bf2917507d447479a21da66_")
    assert rg["PM"] == "MN16303" and rg["DT"] == "2016-12-13T19:33:30.000+00:00"
    assert len(recs) == 3 and all(r.get_tag("st").startswith("2016-12-1") for r in recs)


def test_samtools_fastq_keeps_the_tags(tiny_model: Path, tmp_path: Path,
                                       coded_pod5: tuple[Path, dict[str, str]]) -> None:
    bam = _call_bam(tiny_model, [coded_pod5[0]], tmp_path / "c.bam", emit_moves=True)
    fq = _call_bam(tiny_model, [coded_pod5[0]], tmp_path / "c.fastq", emit_moves=True)
    pysam.samtools.fastq("-T", "*", "-0", str(tmp_path / "st.fastq"), str(bam),
                         catch_stdout=False)
    text = (tmp_path / "st.fastq").read_text()
    assert text == fq.read_text()  # the same header tags as edgecall's own FASTQ
    assert "\tst:Z:" in text and "\tRG:Z:edgecall-test-run_test_level_model" in text


def test_writer_without_runs_points_reads_to_its_one_read_group(tmp_path: Path) -> None:
    """A SAM/BAM opened without the runs (e.g. by a caller that did not scan them) stays
    valid: every read's RG:Z names the header's model-only @RG."""
    import dataclasses

    out = tmp_path / "norun.sam"
    r = dataclasses.replace(_called(0), run=RunMeta(run_id="run-x"), path="/x/a.pod5")
    with writer.open_writer(out, model_name="m") as w:
        w.write(r)
    with pysam.AlignmentFile(str(out), check_sq=False) as f:
        assert [rg["ID"] for rg in f.header.to_dict()["RG"]] == ["m"]
        assert [a.get_tag("RG") for a in f.fetch(until_eof=True)] == ["m"]
    with writer.open_writer(tmp_path / "run.sam", model_name="m",
                            runs=[RunMeta(run_id="run-x")]) as w:
        w.write(r)
    with pysam.AlignmentFile(str(tmp_path / "run.sam"), check_sq=False) as f:
        assert [a.get_tag("RG") for a in f.fetch(until_eof=True)] == ["run-x_m"]
