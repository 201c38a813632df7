"""The bundled demo model's training data: ELPV without the 50 cells the demo plays.

    python deploy/bundled_training_data.py --elpv ../shared/data/elpv --exclude trainer/sample_data/elpv_mini \
        --out runs/data/elpv_minus_demo

Writes an ELPV-layout folder (labels.csv + images/ as symbolic links to the originals) holding
every cell of ``--elpv`` whose file name is not among ``--exclude``'s, so the demo judges cells
the model never saw. Refuses to run when the ELPV folder is missing (regenerating the bundled
model needs ../shared/data; the committed model does not).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build(elpv: Path, exclude: Path, out: Path) -> dict:
    labels = elpv / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: regenerating the bundled model needs the full ELPV data "
                                f"(../shared/data/elpv)")
    demo = {Path(line.split()[0]).name for line in (exclude / "labels.csv").read_text().splitlines() if line.strip()}
    rows = [line for line in labels.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if Path(line.split()[0]).name not in demo]
    (out / "images").mkdir(parents=True, exist_ok=True)
    for line in kept:
        rel = line.split()[0]
        link = out / rel
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((elpv / rel).resolve(), link)
    tmp = out / "labels.csv.tmp"
    tmp.write_text("\n".join(kept) + "\n")
    os.replace(tmp, out / "labels.csv")
    return {"cells": len(kept), "excluded": len(rows) - len(kept), "demo_cells": len(demo)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--elpv", type=Path, required=True)
    p.add_argument("--exclude", type=Path, required=True, help="an ELPV-layout sample whose cells are left out")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        r = build(args.elpv, args.exclude, args.out)
    except FileNotFoundError as e:
        print(f"bundled_training_data: error: {e}", file=sys.stderr)
        return 2
    if r["excluded"] != r["demo_cells"]:
        print(f"bundled_training_data: error: {r['demo_cells']} demo cells but {r['excluded']} left out of "
              f"{args.elpv}: is --exclude a sample of this ELPV?", file=sys.stderr)
        return 2
    print(f"{args.out}: {r['cells']} ELPV cells, the {r['excluded']} demo cells left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
