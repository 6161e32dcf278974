"""Fuzzing ``basecall`` with seeded mutations of a real pod5 file (issue 21).

Truncations, byte and bit flips, zeroed blocks, junk appended or inserted: a
worker process basecalls every mutant the way ``edgecall basecall`` does (files
that crash the pod5 library are found first in a child, :mod:`edgecall.io.vet`)
and reports each outcome. Asserted: the worker never crashes or hangs; a
detected problem is one line naming the file; an output is renamed into place
only for a file without errors, and then it holds every read called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import modelkit
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N_CASES = int(os.environ.get("EDGECALL_FUZZ_CASES", "300"))

_WORKER = r'''
import json, random, sys
from pathlib import Path
from edgecall.io.vet import crashers
from edgecall.pipeline import Basecaller, basecall

src, model, folder = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
seed, n = int(sys.argv[4]), int(sys.argv[5])
data = src.read_bytes()
rng = random.Random(seed)
KINDS = ("truncate", "flip", "bits", "zero", "junk", "insert")


def mutate(kind):
    b = bytearray(data)
    if kind == "truncate":
        return bytes(b[:rng.randrange(len(b))])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "bits":
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        at = rng.randrange(len(b))
        size = len(b[at:at + rng.randint(1, 4096)])
        b[at:at + size] = bytes(size)
    elif kind == "junk":
        b += rng.randbytes(rng.randint(1, 64))
    else:
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    return bytes(b)


paths = []
for i in range(n):
    kind = KINDS[i % len(KINDS)]
    path = folder / f"case_{i}_{kind}.pod5"
    path.write_bytes(mutate(kind))
    paths.append(path)
crashed = crashers(paths)
bc = Basecaller.load(model, engine="onnx", threads=1)
for path in paths:
    out = path.with_suffix(".fastq")
    if path in crashed:
        rec = {"errors": [crashed[path]], "reads": 0}
    else:
        s = basecall([path], out, basecaller=bc)
        rec = {"errors": [f.reason for f in s.errors], "reads": s.reads}
    rec.update(case=path.name, out=out.exists(),
               records=sum(1 for _ in open(out)) // 4 if out.exists() else None,
               temps=[p.name for p in folder.glob(f".{out.name}.*")])
    print(json.dumps(rec), flush=True)
'''


def test_fuzzed_pod5_never_crashes_and_never_half_writes(tmp_path: Path,
                                                         tiny_model: Path) -> None:
    seed = int(os.environ.get("EDGECALL_FUZZ_SEED", "21"))
    src = tmp_path / "src.pod5"
    modelkit.make_coded_pod5(src, 8, seed=1, min_len=80, max_len=400)
    cases = tmp_path / "cases"
    cases.mkdir()
    r = subprocess.run([sys.executable, "-c", _WORKER, str(src), str(tiny_model), str(cases),
                        str(seed), str(N_CASES)], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(rows) == N_CASES, \
        f"worker died (exit {r.returncode}) after {len(rows)} cases:\n{r.stderr[-3000:]}"
    errored = 0
    for row in rows:
        assert not row["temps"], row
        if row["errors"]:
            errored += 1
            assert not row["out"], f"output renamed into place despite errors: {row}"
            for reason in row["errors"]:
                assert "\n" not in reason and reason.startswith(str(cases / row["case"])), row
        else:
            assert row["out"] and row["records"] == row["reads"] > 0, row
    print(f"\nfuzz seed {seed}: {N_CASES} mutants, {errored} detected and refused, "
          f"{N_CASES - errored} called in full")
    assert errored > N_CASES // 2


CRASHER = Path(__file__).resolve().parent / "data" / "crashes_pod5.pod5"  # a fuzz find


def test_file_that_crashes_the_pod5_library_is_reported_not_fatal(tmp_path: Path,
                                                                  tiny_model: Path) -> None:
    """This mutant (a flipped run-info table) makes pyarrow segfault while reading."""
    from test_cli import edgecall

    crash = tmp_path / "crash.pod5"
    crash.write_bytes(CRASHER.read_bytes())
    good = tmp_path / "good.pod5"
    seqs = modelkit.make_coded_pod5(good, 3, seed=2, min_len=80, max_len=300)
    out = tmp_path / "o.fastq"
    r = edgecall("basecall", str(crash), str(good), "-o", str(out), "--model",
                 str(tiny_model), "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert f"edgecall: {crash}: corrupt pod5 file (the pod5 library crashed reading it: " \
        "SIGSEGV)" in r.stderr
    assert out.read_text().splitlines()[1::4] == list(seqs.values())


def test_daemon_quarantines_a_file_that_crashes_the_pod5_library(tmp_path: Path) -> None:
    import daemonkit as dk
    from test_daemon_service import EchoCaller, _config, _service

    cfg = _config(tmp_path)
    ids = dk.make_inputs(cfg.watch, {"good.pod5": 2})
    (cfg.watch / "crash.pod5").write_bytes(CRASHER.read_bytes())
    _service(cfg, EchoCaller()).run()  # reads crash.pod5 only in a child: still alive
    rows = dk.journal(cfg.state)
    assert rows["crash.pod5"]["state"] == "quarantined"
    assert "the pod5 library crashed reading it: SIGSEGV" in rows["crash.pod5"]["reason"]
    assert rows["crash.pod5"]["reason"].startswith(str(cfg.watch / "crash.pod5"))
    assert set(dk.fastq_ids(cfg.output)) == ids["good.pod5"]
