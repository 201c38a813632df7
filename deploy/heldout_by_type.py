"""A run's held-out cells, one folder per ELPV cell type: per-line calibration sets for the bundled model.

    python deploy/heldout_by_type.py --run runs/bundled/hybrid --out runs/bundled/heldout_by_type

A line makes one kind of part, and its camera is calibrated on good parts of that kind
(``edge-calibrate --engine ... --good DIR --camera NAME``). ELPV mixes two kinds of cell, mono- and
poly-crystalline (third column of its labels.csv); their good cells score differently (the bundled
model: 95th percentile of held-out good mono cells 2.04, poly 1.55), so one threshold for both is too
low for mono cells and too high for poly ones (docs/benchmarks.md, tuned_head_reading). This writes,
for each cell type, ``OUT/TYPE/good`` (the run's validation good cells: held out from training, the
cells ``edge-calibrate --run`` fits on) and ``OUT/TYPE/defective`` (the run's test defective cells,
for the miss-rate estimate), as symbolic links to the originals. Nothing the model trained on is
written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cell_types(labels_csv: Path) -> dict[str, str]:
    """Relative path -> cell type, from an ELPV labels.csv (path, defect probability, type)."""
    out = {}
    for n, line in enumerate(labels_csv.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise ValueError(f"{labels_csv} line {n}: no cell type (third column) in {line!r}")
        out[parts[0]] = parts[2]
    return out


def write_folders(run: Path, out: Path) -> dict[str, dict[str, int]]:
    split = json.loads((run / "split.json").read_text())
    root = Path(split["data_root"])
    types = cell_types(root / "labels.csv")
    groups = {"good": split["validation_good"],
              "defective": [s["path"] for s in split["test"] if int(s["label"]) == 1]}
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: remove it first (its folders must hold this run's cells only)")
    counts: dict[str, dict[str, int]] = {}
    for group, paths in groups.items():
        for rel in paths:
            if rel not in types:
                raise ValueError(f"{rel} of {run / 'split.json'} is not in {root / 'labels.csv'}")
            folder = out / types[rel] / group
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink((root / rel).resolve(), folder / Path(rel).name)
            counts.setdefault(types[rel], {"good": 0, "defective": 0})[group] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a training run (its split.json names the held-out cells)")
    p.add_argument("--out", type=Path, required=True, help="folder for TYPE/good and TYPE/defective")
    args = p.parse_args(argv)
    try:
        counts = write_folders(args.run, args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"heldout_by_type: error: {e}", file=sys.stderr)
        return 2
    for kind, c in sorted(counts.items()):
        print(f"{args.out / kind}: {c['good']} held-out good, {c['defective']} test defective cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
