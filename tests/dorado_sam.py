"""A checker for dorado's SAM specification (nanoporetech/dorado documentation/SAM.md).

Written from the spec's tables, independently of edgecall's writer: the read-group
header fields and the read tags with their SAM types and meanings. Each check
returns a list of problems (empty = conforming) so a test can show them all.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pysam

# read tags of a simplex basecall: tag -> SAM type (as written in SAM text)
REQUIRED = {"RG": "Z", "qs": "f", "ts": "i", "ns": "i", "mx": "i", "ch": "i", "rn": "i",
            "st": "Z", "du": "f", "fn": "Z", "sm": "f", "sd": "f", "sv": "Z"}
OPTIONAL = {"mv": "B", "dx": "i", "pi": "Z", "sp": "i", "bh": "i", "MN": "i", "pt": "i",
            "pa": "B", "MM": "Z", "ML": "B", "BC": "Z", "bc": "Z", "bs": "i"}
RG_FIELDS = {"ID", "PU", "PM", "DT", "PL", "DS", "LB", "SM", "al"}


def parse_iso_utc(text: str) -> datetime.datetime | None:
    """An ISO 8601 timestamp with a UTC offset, or None."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None or when.utcoffset() != datetime.timedelta(0):
        return None
    return when


def _ds_fields(ds: str) -> dict[str, str]:
    """``key=value`` pairs of an @RG DS field."""
    return dict(kv.split("=", 1) for kv in ds.split() if "=" in kv)


def check_header(header: dict[str, Any]) -> list[str]:
    """Problems with the @HD/@PG/@RG lines."""
    bad: list[str] = []
    if header.get("HD", {}).get("VN") is None:
        bad.append("@HD without VN")
    pgs = header.get("PG", [])
    if not pgs or not pgs[0].get("CL") or not pgs[0].get("PN"):
        bad.append("@PG without PN/CL (the command line)")
    for rg in header.get("RG", []):
        extra = set(rg) - RG_FIELDS
        if extra:
            bad.append(f"@RG {rg.get('ID')}: fields not in the spec {sorted(extra)}")
        ds = _ds_fields(rg.get("DS", ""))
        model, run = ds.get("basecall_model"), ds.get("runid")
        if not model:
            bad.append(f"@RG {rg.get('ID')}: DS has no basecall_model=")
        if run and rg.get("ID") != f"{run}_{model}":
            bad.append(f"@RG ID {rg.get('ID')} is not <runid>_<basecall_model>")
        if rg.get("PL") != "ONT":
            bad.append(f"@RG {rg.get('ID')}: PL is not ONT")
        if "DT" in rg and parse_iso_utc(rg["DT"]) is None:
            bad.append(f"@RG {rg.get('ID')}: DT {rg['DT']!r} is not ISO 8601 UTC")
    return bad


def _tags(seg: pysam.AlignedSegment) -> dict[str, tuple[str, str]]:
    """tag -> (type, value text) from the record's SAM text."""
    out: dict[str, tuple[str, str]] = {}
    for field in seg.to_string().split("\t")[11:]:
        tag, kind, value = field.split(":", 2)
        out[tag] = (kind, value)
    return out


def check_record(seg: pysam.AlignedSegment, header: dict[str, Any]) -> list[str]:
    """Problems with one unaligned read record."""
    name = seg.query_name
    tags = _tags(seg)
    bad = [f"{name}: missing {t}:{k}" for t, k in REQUIRED.items() if t not in tags]
    for tag, (kind, _v) in tags.items():
        want = REQUIRED.get(tag) or OPTIONAL.get(tag)
        if want is None:
            bad.append(f"{name}: tag {tag} is not in dorado's spec")
        elif kind != want:
            bad.append(f"{name}: {tag} has type {kind}, the spec says {want}")
    if bad:
        return bad
    v = {t: val for t, (_k, val) in tags.items()}
    groups = {rg["ID"]: rg for rg in header.get("RG", [])}
    if v["RG"] not in groups:
        bad.append(f"{name}: RG:Z:{v['RG']} has no @RG line")
    ts, ns = int(v["ts"]), int(v["ns"])
    if not 0 <= ts <= ns:
        bad.append(f"{name}: ts {ts} outside [0, ns {ns}]")
    if float(v["du"]) <= 0:
        bad.append(f"{name}: du {v['du']} is not a positive duration in seconds")
    if not 0 <= float(v["qs"]) <= 90:
        bad.append(f"{name}: qs {v['qs']} is not a mean qscore")
    if float(v["sd"]) <= 0:
        bad.append(f"{name}: sd {v['sd']} is not a positive dispersion")
    if int(v["ch"]) < 1 or int(v["mx"]) < 0 or int(v["rn"]) < 0:
        bad.append(f"{name}: ch/mx/rn out of range")
    if Path(v["fn"]).name != v["fn"]:
        bad.append(f"{name}: fn {v['fn']!r} is a path, not a file name")
    start = parse_iso_utc(v["st"])
    if start is None:
        bad.append(f"{name}: st {v['st']!r} is not an ISO 8601 UTC time")
    else:
        rg = groups.get(v["RG"], {})
        begun = parse_iso_utc(rg.get("DT", "")) if rg.get("DT") else None
        if begun is not None and start < begun:
            bad.append(f"{name}: st {v['st']} is before the run started ({rg['DT']})")
    if "mv" in tags:
        bad += _check_moves(name, v["mv"], seg.query_length, ns - ts)
    return bad


def _check_moves(name: str, text: str, n_bases: int, n_samples: int) -> list[str]:
    """mv:B:c,<stride>,<m0>,...: one move per base, frames cover at most signal[ts:ns]."""
    kind, *vals = text.split(",")
    if kind != "c":
        return [f"{name}: mv is B:{kind}, the spec says B:c"]
    stride, moves = int(vals[0]), [int(x) for x in vals[1:]]
    bad = []
    if stride <= 0 or set(moves) - {0, 1}:
        bad.append(f"{name}: mv stride {stride} or moves not 0/1")
    if sum(moves) != n_bases:
        bad.append(f"{name}: mv has {sum(moves)} moves for {n_bases} bases")
    if (len(moves) - 1) * stride > n_samples:
        bad.append(f"{name}: mv spans more than signal[ts:ns]")
    return bad


def check_file(path: Path) -> list[str]:
    """Every problem of a SAM/BAM file (header and all records)."""
    with pysam.AlignmentFile(str(path), check_sq=False) as f:
        header = f.header.to_dict()
        bad = check_header(header)
        for seg in f.fetch(until_eof=True):
            bad += check_record(seg, header)
    return bad
