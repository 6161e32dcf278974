"""``edgecall models``: list the bundled models."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand."""
    p = sub.add_parser("models", help="list bundled models",
                       description="List bundled models with chemistry, sample rate, size "
                       "and measured accuracy.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _identity(card: object) -> str:
    """Median identities measured per dataset, e.g. 'ecoli 0.901'."""
    acc = getattr(card, "accuracy", {})
    parts = [f"{name} {v['median_identity']:.3f}" for name, v in acc.items()
             if isinstance(v, dict) and "median_identity" in v]
    return ", ".join(parts) or "not measured"


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON)."""
    from edgecall.models import bundled, models_dir

    cards = bundled()
    rows = []
    for c in cards:
        size = c.onnx_path.stat().st_size if c.onnx_path.is_file() else 0  # what runs
        folder = sum((c.folder / f).stat().st_size for f in [c.file, *c.variants.values()]
                     if (c.folder / f).is_file())
        rows.append({"name": c.name, "default": c.default, "pore": c.pore,
                     "sample_rate": c.sample_rate,
                     "accepted_sample_rates": list(c.accepted_sample_rates),
                     "size_bytes": size, "folder_bytes": folder, "variants": c.variant_names,
                     "accuracy": c.accuracy, "identity": _identity(c)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no trained models bundled (looked in {models_dir()}); "
              "give a model folder with --model")
        return 0
    vw = max(len("variants"), *(len(",".join(r["variants"])) for r in rows))
    print(f"{'name':28} {'chemistry':10} {'rate (Hz)':12} {'size':>9}  {'variants':{vw}} identity")
    # size: the model's own file (--variant main), the one edgecall runs by default
    for r in rows:
        rate = "/".join(map(str, r["accepted_sample_rates"]))
        star = "*" if r["default"] else " "
        print(f"{r['name'] + star:28} {r['pore']:10} {rate:12} {r['size_bytes'] / 1e6:7.2f}MB  "
              f"{','.join(r['variants']):{vw}} {r['identity']}")
    print("* default for its chemistry; size = the model's own file; the first variant is "
          "that file (--variant main)")
    return 0
