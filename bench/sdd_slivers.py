"""Which SDD defects the hybrid misses, and how small they are (issue 11: why SDD k = 10 stays below 0.995).

KolektorSDD's parts are cut into vertical thirds (bench/prepare_sdd.py); a third is defective when any
pixel of its rows of the crack's mask is set. A crack that ends just across a cut leaves a sliver of a few
mask rows at the edge of the next third, which is then labelled defective although almost all of the
crack is in its neighbour. This script lists the defective thirds by mask size and, from the detection
bench's hybrid runs (``runs/bench_detection/sdd/s<seed>/<run>/test_scores.npz``), where each defective
third ranks among the good ones, and the image AUROC with and without the thirds whose mask holds fewer
than ``--sliver-px`` pixels. The protocol's figure is the one with them; the other says where the gap is.

  .venv/bin/python bench/sdd_slivers.py [--run hybrid_knn_head_lite2_k10] [--seeds 0 1 2]

Writes the ``sdd_slivers`` section of docs/benchmarks.md and docs/sdd_slivers.jpg (each sliver third
with its mask in red; ``--no-docs``: print only).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402

from trainer.metrics import auroc  # noqa: E402


def mask_sizes(data: Path) -> dict[str, tuple[int, int]]:
    """crop path relative to the data set (crack/<stem>.png) -> (mask pixels, mask rows)."""
    out = {}
    for f in sorted((data / "masks" / "crack").glob("*_mask.png")):
        m = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise SystemExit(f"{f} is not a readable PNG: rebuild the thirds with make sdd-data")
        m = m > 0
        out[f"crack/{f.name[:-len('_mask.png')]}.png"] = (int(m.sum()), int(m.any(axis=1).sum()))
    return out


def sliver_picture(data: Path, slivers: set[str], out: Path, height: int = 300) -> None:
    """The sliver thirds side by side, mask pixels painted red, at ``height`` pixels."""
    tiles = []
    for rel in sorted(slivers):
        img = cv2.imread(str(data / rel), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(data / "masks" / "crack" / (Path(rel).stem + "_mask.png")), cv2.IMREAD_GRAYSCALE) > 0
        img[mask] = (0, 0, 255)
        tile = cv2.resize(img, (round(img.shape[1] * height / img.shape[0]), height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, Path(rel).stem, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 255), 2)
        tiles += [tile, np.full((height, 12, 3), 255, np.uint8)]
    if tiles:
        cv2.imwrite(str(out), np.hstack(tiles[:-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "data" / "sdd_thirds")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_detection" / "sdd")
    p.add_argument("--run", nargs="+", default=["hybrid_knn_head_lite2_k10", "hybrid_knn_head_lite2_k1"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sliver-px", type=int, default=500, help="a defective third whose mask has fewer pixels")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args()
    if not (args.data / "masks" / "crack").is_dir():
        raise SystemExit(f"no SDD thirds at {args.data}: make sdd-data (or --data DIR)")
    sizes = mask_sizes(args.data)
    slivers = {path for path, (px, _) in sizes.items() if px < args.sliver_px}
    smallest = sorted(sizes.items(), key=lambda kv: kv[1][0])[:5]
    lines = ["## Where the SDD misses are (`bench/sdd_slivers.py`, issue 11)", "",
             f"{len(sizes)} defective thirds; the five smallest masks (pixels, rows of the {args.data.name} crop): "
             + ", ".join(f"{Path(k).stem} {px} px / {rows} rows" for k, (px, rows) in smallest)
             + f". Slivers (< {args.sliver_px} px): {', '.join(sorted(Path(s).stem for s in slivers)) or 'none'}.", "",
             "| run | seed | image AUROC (protocol) | without the slivers | slivers in the test set: share of good "
             "test thirds scored above each |", "|---|---|---|---|---|"]
    for run in args.run:
        with_, without = [], []
        for seed in args.seeds:
            path = args.runs / f"s{seed}" / run / "test_scores.npz"
            if not path.is_file():
                lines.append(f"| {run} | {seed} | not run | | |")
                continue
            z = np.load(path, allow_pickle=False)
            scores, labels, paths = z["scores"], z["labels"], [str(x) for x in z["paths"]]
            keep = np.array([x not in slivers for x in paths])
            good = scores[labels == 0]
            ranks = [f"{Path(x).stem} {float((good >= s).mean()):.3f}" for x, s in zip(paths, scores) if x in slivers]
            with_.append(auroc(scores, labels))
            without.append(auroc(scores[keep], labels[keep]))
            lines.append(f"| {run} | {seed} | {with_[-1]:.4f} | {without[-1]:.4f} | {', '.join(ranks) or '-'} |")
        if with_:
            lines.append(f"| {run} | mean | **{statistics.mean(with_):.4f}** | **{statistics.mean(without):.4f}** | |")
    md = "\n".join(lines)
    print(md)
    if not args.no_docs:
        picture = ROOT / "docs" / "sdd_slivers.jpg"
        sliver_picture(args.data, slivers, picture)
        write_section("sdd_slivers", md + f"\n\n![the sliver thirds, mask in red]({picture.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
