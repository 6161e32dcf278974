"""Tests for edgecall.summary and ``edgecall summary``: dorado's sequencing-summary table."""

from __future__ import annotations

import csv
import datetime
import io
import os
import subprocess
import sys
from pathlib import Path

import modelkit
import pytest

from edgecall import summary
from edgecall.io import reader
from edgecall.pipeline import basecall

# dorado summary's columns, in its order (from its documentation and output)
DORADO_COLUMNS = ["filename", "read_id", "run_id", "channel", "mux", "minknow_events",
                  "start_time", "duration", "passes_filtering", "template_start",
                  "num_events_template", "template_duration", "sequence_length_template",
                  "mean_qscore_template", "strand_score_template", "median_template",
                  "mad_template", "scaling_median_template", "scaling_mad_template"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """Two pod5 files of different runs and one BAM and one FASTQ of both."""
    d = tmp_path_factory.mktemp("summary")
    for k, run in enumerate(("run-a", "run-b")):
        modelkit.make_coded_pod5(d / f"{run}.pod5", 3, seed=20 + k, min_len=60, max_len=150,
                                 run_id=run, started=datetime.datetime(
                                     2026, 3, 1 + k, 12, tzinfo=datetime.UTC))
    pods = [d / "run-a.pod5", d / "run-b.pod5"]
    for name in ("calls.bam", "calls.fastq"):
        basecall(pods, d / name, model=str(tiny_model), command_line="edgecall basecall")
    return {"bam": d / "calls.bam", "fastq": d / "calls.fastq", "dir": d}


def _table(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    assert rows and list(rows[0]) == DORADO_COLUMNS
    return rows


def test_summary_rows_from_bam(two_runs: dict[str, Path]) -> None:
    buf = io.StringIO()
    assert summary.write_table(summary.summary_rows(two_runs["bam"]), buf) == 6
    rows = _table(buf.getvalue())
    raw = {r.read_id: r for p in ("run-a", "run-b")
           for r in reader.iter_reads([two_runs["dir"] / f"{p}.pod5"])}
    for row in rows:
        r = raw[row["read_id"]]
        assert row["filename"] == Path(r.path).name and row["run_id"] == r.run.run_id
        assert (int(row["channel"]), int(row["mux"])) == (r.channel, r.well)
        # seconds since the run's acquisition start, not since the epoch
        assert float(row["start_time"]) == pytest.approx(r.start_sample / 4000, abs=1e-3)
        assert float(row["duration"]) == pytest.approx(r.num_samples / 4000, abs=1e-4)
        assert float(row["template_start"]) == pytest.approx(float(row["start_time"]))
        assert int(row["minknow_events"]) == int(row["num_events_template"]) == r.num_samples
        assert int(row["sequence_length_template"]) > 0
        assert row["passes_filtering"] == "TRUE"
    assert {row["run_id"] for row in rows} == {"run-a", "run-b"}


def test_fastq_summary_matches_bam(two_runs: dict[str, Path]) -> None:
    starts = {r.run_id: summary.parse_time(r.acquisition_start_time)
              for r in reader.scan_runs([two_runs["dir"] / "run-a.pod5",
                                         two_runs["dir"] / "run-b.pod5"])}
    bam, fq = io.StringIO(), io.StringIO()
    summary.write_table(summary.summary_rows(two_runs["bam"]), bam)
    summary.write_table(summary.summary_rows(two_runs["fastq"], run_starts=starts), fq)
    def rounded(text: str) -> list[dict[str, object]]:
        return [{k: round(float(v), 3) if k.endswith(("template", "time", "duration", "start"))
                 else v for k, v in row.items()} for row in _table(text)]

    assert rounded(bam.getvalue()) == rounded(fq.getvalue())  # FASTQ floats are %g text


def test_summary_cli_and_min_qscore(two_runs: dict[str, Path]) -> None:
    r = subprocess.run([sys.executable, "-m", "edgecall", "summary", str(two_runs["bam"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = _table(r.stdout)
    qs = sorted(float(x["mean_qscore_template"]) for x in rows)
    cut = (qs[2] + qs[3]) / 2
    r = subprocess.run([sys.executable, "-m", "edgecall", "summary", str(two_runs["bam"]),
                        "--min-qscore", f"{cut}"], capture_output=True, text=True, timeout=120)
    flags = [x["passes_filtering"] for x in _table(r.stdout)]
    assert flags.count("TRUE") == 3 and flags.count("FALSE") == 3
    assert summary.min_qscore_of({"PG": [{"CL": "edgecall basecall x --min-qscore 9"}]}) == 9.0


def test_emit_summary_beside_output(two_runs: dict[str, Path], tiny_model: Path,
                                    tmp_path: Path) -> None:
    pods = [str(two_runs["dir"] / "run-a.pod5"), str(two_runs["dir"] / "run-b.pod5")]
    out = tmp_path / "calls.sam"
    base = [sys.executable, "-m", "edgecall", "basecall", *pods, "--model", str(tiny_model),
            "-o", str(out), "--emit-summary"]
    r = subprocess.run(base + ["--min-qscore", "1000"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = _table((tmp_path / "sequencing_summary.txt").read_text())
    assert len(rows) == 6 and {x["passes_filtering"] for x in rows} == {"FALSE"}
    r = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--force" in r.stderr


@pytest.mark.slow
def test_qc_tool_reads_the_summary(two_runs: dict[str, Path], tmp_path: Path) -> None:
    """nanoget (NanoPlot's loader) reads the table, installed into a venv of its own."""
    table = tmp_path / "sequencing_summary.txt"
    with open(table, "w") as fh:
        summary.write_table(summary.summary_rows(two_runs["bam"]), fh)
    venv = Path(os.environ.get("EDGECALL_QC_VENV", tmp_path / "qc"))
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        got = subprocess.run([str(py), "-m", "pip", "install", "-q", "nanoget"],
                             capture_output=True, text=True, timeout=900)
        if got.returncode != 0:
            pytest.skip(f"cannot install nanoget: {got.stderr.strip().splitlines()[-1:]}")
    code = ("import sys, nanoget; df = nanoget.get_input('summary', files=[sys.argv[1]], "
            "readtype='1D'); print(len(df), round(df['lengths'].sum()), "
            "sorted(df.columns))")
    r = subprocess.run([str(py), "-c", code, str(table)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    n, total, cols = r.stdout.split(" ", 2)
    rows = _table(table.read_text())
    assert int(n) == 6 and int(total) == sum(int(x["sequence_length_template"]) for x in rows)
    assert "quals" in cols and "channelIDs" in cols
