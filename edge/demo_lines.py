"""``python -m edge.demo_lines``: the demo's cells as production lines, one per cell type.

A line makes one kind of part and its camera is calibrated on that kind (the bundled model's
manifest carries entries ``mono`` and ``poly``, fitted on held-out good cells of each type,
deploy/heldout_by_type.py). This lays an ELPV-layout sample out as one image folder per cell type
(third column of labels.csv), as symbolic links, so ``make demo`` can play each folder as the
camera of its line: ``edge-run --source mono=OUT/mono --source poly=OUT/poly``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def clear_links(out: Path) -> None:
    """Empty a folder this module wrote (sub-folders of symbolic links); refuse anything else."""
    if not out.exists():
        return
    for folder in out.iterdir():
        if not folder.is_dir() or folder.is_symlink() or any(not f.is_symlink() for f in folder.iterdir()):
            raise ValueError(f"{out} holds {folder.name}, which this tool did not write: choose an empty "
                             f"or new --out folder")
    for folder in out.iterdir():
        for link in folder.iterdir():
            link.unlink()
        folder.rmdir()


def write_lines(images: Path, labels_csv: Path, out: Path) -> dict[str, int]:
    """OUT/TYPE/NAME -> images/NAME for every labelled cell; OUT's old links go first. Returns cells per type."""
    rows = [line.split() for line in labels_csv.read_text().splitlines() if line.strip()]
    missing_type = [r[0] for r in rows if len(r) < 3]
    if missing_type:
        raise ValueError(f"{labels_csv}: no cell type (third column) for {missing_type[0]}")
    clear_links(out)
    counts: dict[str, int] = {}
    for rel, _probability, kind, *_ in rows:
        source = images / Path(rel).name
        if not source.is_file():
            raise FileNotFoundError(f"{source} (named in {labels_csv}) does not exist")
        (out / kind).mkdir(parents=True, exist_ok=True)
        os.symlink(source.resolve(), out / kind / source.name)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.demo_lines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="the sample's image folder")
    p.add_argument("--labels", type=Path, required=True, help="its labels.csv (path, defect probability, type)")
    p.add_argument("--out", type=Path, required=True, help="folder for one sub-folder per type (links an earlier run wrote there are replaced)")
    args = p.parse_args(argv)
    try:
        counts = write_lines(args.images, args.labels, args.out)
    except (OSError, ValueError) as e:
        print(f"demo_lines: error: {e}", file=sys.stderr)
        return 2
    print(", ".join(f"line {kind}: {n} cells ({args.out / kind})" for kind, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
