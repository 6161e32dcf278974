"""Identity measurement: known alignments give known identities; summaries; BAM refs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.evaluate import identities, identity, make_aligner, summarise

pytest.importorskip("mappy")


def _ref(tmp_path: Path, n: int = 8000, seed: int = 5) -> tuple[Path, str]:
    rng = np.random.default_rng(seed)
    ref = "".join(rng.choice(list("ACGT"), n))
    path = tmp_path / "ref.fa"
    path.write_text(f">chr\n{ref}\n")
    return path, ref


def _mutate(seq: str, every: int) -> tuple[str, int]:
    """Substitute every ``every``-th base; returns the read and the substitution count."""
    out = list(seq)
    n = 0
    for i in range(every // 2, len(out), every):
        out[i] = {"A": "C", "C": "G", "G": "T", "T": "A"}[out[i]]
        n += 1
    return "".join(out), n


def test_known_substitutions_give_known_identity(tmp_path: Path) -> None:
    path, ref = _ref(tmp_path)
    al = make_aligner(path)
    read, n_sub = _mutate(ref[1000:4000], 50)
    ident = identity(al, read)
    assert ident == pytest.approx(1 - n_sub / 3000, abs=1e-9)
    assert identity(al, ref[2000:5000]) == 1.0


def test_deletion_counts_in_blen(tmp_path: Path) -> None:
    path, ref = _ref(tmp_path)
    read = ref[1000:2500] + ref[2510:4000]  # a 10-base deletion
    ident = identity(make_aligner(path), read)
    assert ident == pytest.approx(1 - 10 / 3000, abs=1e-9)


def test_unmapped_and_summary(tmp_path: Path) -> None:
    path, ref = _ref(tmp_path)
    rng = np.random.default_rng(9)
    junk = "".join(rng.choice(list("ACGT"), 2000))
    ids = identities({"good": ref[100:3100], "junk": junk, "empty": ""}, path)
    assert ids["good"] == 1.0 and ids["junk"] is None and ids["empty"] is None
    s = summarise(ids, bases=5000)
    assert s == {"reads": 3, "mapped": 1, "median_identity": 1.0, "mean_identity": 1.0,
                 "bases": 5000}


def test_reverse_strand_read(tmp_path: Path) -> None:
    from tools.data import revcomp

    path, ref = _ref(tmp_path)
    read, n_sub = _mutate(ref[3000:6000], 100)
    assert identity(make_aligner(path), revcomp(read)) == pytest.approx(1 - n_sub / 3000)


def test_missing_reference_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot build a mappy index"):
        make_aligner(tmp_path / "nope.fa")


@pytest.mark.realdata
def test_bam_references_are_in_read_orientation(shared_data: Path) -> None:
    from tools.evaluate import bam_references

    refs = bam_references(shared_data / "r10.4.1" / "remora_can" / "mappings.bam")
    assert len(refs) >= 5 and all(set(r) <= set("ACGTN") for r in refs.values())
