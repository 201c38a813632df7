"""Long parts: squash, letterbox or tiles? (issue 11: "choose what serves defects best").

    python bench/resize_modes.py [--seeds 0 1 2] [--src ../shared/data/kolektorsdd]

KolektorSDD's whole images (500 x 1240-1285 px, 2.5 : 1; 347 good and 52 defective commutators) are
judged as whole parts, three ways, by the product's label-free familiarity member at its defaults
(`edge-train familiarity`: EfficientNet-Lite2 patch features of stages 2 + 4, per-image standardised
input, a 4,096-patch greedy coreset of at most 200,000 candidates, image score = the largest patch
distance):

* **squash**: the whole image resized to 224 x 224 (edge/preprocess.py, what the edge does today);
* **letterbox**: padded to a square with the image's mean grey level (aspect ratio kept), then 224 px;
* **tiles**: cut into vertical thirds (bench/prepare_sdd.py's rule), each squashed to 224 px and
  scored on its own; the part's score is the largest of its three (3 engine calls per part).

Split per part (seeded): 25% of the good parts and every defective part are tested; the memory bank
is built from the other good parts (their three tiles, for tiles). No labels are used. Image
features are computed once per mode and reused across seeds (the backbone is frozen); only the
bank and the split change with the seed. Writes docs/bench/resize_modes.json and the
`resize_modes` section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import mean_std, write_section  # noqa: E402
from edge.preprocess import to_model_input  # noqa: E402
from trainer.backbones import load_imagenet_weights  # noqa: E402
from trainer.familiarity import PatchKnnFamiliarity, k_center_greedy  # noqa: E402
from trainer.familiarity.config import FamiliarityModelConfig, FamiliarityTrainConfig  # noqa: E402
from trainer.metrics import auprc, auroc, fnr_at_far  # noqa: E402
from trainer.train_familiarity import draw_patches, patch_share  # noqa: E402

SRC = ROOT.parent / "shared" / "data" / "kolektorsdd"
JSON_OUT = ROOT / "docs" / "bench" / "resize_modes.json"
MODES = ("squash", "letterbox", "tiles")
TILES = 3
TEST_GOOD_FRACTION = 0.25
BATCH = 16


def load_parts(src: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every KolektorSDD image (train/ and val/) as uint8 H x W, and its label (1 = any mask pixel)."""
    images, labels = [], []
    for split in ("train", "val"):
        for path in sorted((src / "images" / split).glob("*.jpg")):
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(src / "masks" / split / f"{path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            if img is None or mask is None:
                raise SystemExit(f"cannot read {path} or its mask; see ../shared/data/README.md")
            images.append(img)
            labels.append(int(mask.any()))
    if not images:
        raise SystemExit(f"no images under {src}/images/{{train,val}}; pass --src")
    return images, np.array(labels)


def letterbox(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    side = max(h, w)
    out = np.full((side, side), int(round(float(img.mean()))), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def thirds(img: np.ndarray) -> list[np.ndarray]:
    h = img.shape[0]
    cut = h // TILES
    return [img[:cut], img[cut:2 * cut], img[2 * cut:]]


def views(img: np.ndarray, mode: str) -> list[np.ndarray]:
    """The model inputs (before resizing) one part gives in ``mode``."""
    if mode == "squash":
        return [img]
    if mode == "letterbox":
        return [letterbox(img)]
    return thirds(img)


@torch.no_grad()
def part_features(model: PatchKnnFamiliarity, images: list[np.ndarray], mode: str, size: int) -> torch.Tensor:
    """(parts, views, D, h, w) patch features of every part in ``mode``."""
    per_part = len(views(images[0], mode))
    inputs = [to_model_input(v, size, 1) for img in images for v in views(img, mode)]
    feats = []
    for i in range(0, len(inputs), BATCH):
        feats.append(model.features(torch.from_numpy(np.stack(inputs[i:i + BATCH]))))
    f = torch.cat(feats)
    return f.reshape(len(images), per_part, *f.shape[1:])


def split_parts(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    good = np.flatnonzero(labels == 0)
    rng = np.random.default_rng(seed)
    test_good = rng.choice(good, size=int(round(TEST_GOOD_FRACTION * len(good))), replace=False)
    train = np.setdiff1d(good, test_good)
    test = np.concatenate([np.sort(test_good), np.flatnonzero(labels == 1)])
    return train, test


def fit_and_score(model: PatchKnnFamiliarity, feats: torch.Tensor, train: np.ndarray, test: np.ndarray,
                  train_cfg: FamiliarityTrainConfig, size: int, seed: int) -> tuple[np.ndarray, float]:
    """Bank from the training parts' patches, drawn as `edge-train familiarity` draws them (at most
    max_candidates, the same share from every view, seeded), greedy coreset; returns the test parts' scores
    (largest over views) and seconds."""
    start = time.perf_counter()
    train_f = feats[train].flatten(0, 1)  # (views, D, h, w)
    n_views, d, h, w = train_f.shape
    flat = train_f.permute(0, 2, 3, 1).reshape(n_views, h * w, d)
    per_view = patch_share(n_views, h * w, train_cfg.max_candidates)
    candidates = torch.cat(draw_patches(flat, per_view, torch.Generator().manual_seed(seed)))
    n = min(train_cfg.model.bank_size, len(candidates))
    model.set_memory_bank(candidates[k_center_greedy(candidates, n, seed=seed)])
    seconds = time.perf_counter() - start
    test_f = feats[test]
    with torch.no_grad():
        s = model.scores_from_features(test_f.flatten(0, 1), (size, size)).score.numpy()
    return s.reshape(len(test), -1).max(axis=1), seconds


def table(rows: list[dict]) -> str:
    lines = ["| mode | engine calls per part | seeds | image AUROC | image AUPRC | miss rate at 5% false alarms | bank fit s (median) |",
             "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        r = [x for x in rows if x["mode"] == mode]
        if not r:
            continue
        seeds = ",".join(str(x["seed"]) for x in r)
        lines.append(f"| {mode} | {r[0]['views']} | {seeds} | {mean_std(x['auroc'] for x in r)} | "
                     f"{mean_std(x['auprc'] for x in r)} | {mean_std(x['miss_at_5'] for x in r)} | "
                     f"{float(np.median([x['fit_seconds'] for x in r])):.0f} |")
    return "\n".join(lines)


HEAD = """## Long parts: squash, letterbox or tiles (`bench/resize_modes.py`, issue 11)

KolektorSDD whole images (500 x 1240-1285 px, 2.5 : 1), judged as whole parts by the label-free
familiarity member at `edge-train familiarity`'s defaults (Lite2, standardised, 4,096-patch coreset
of 200,000 candidates, 224 px). Split per part: 25 % of the good parts and all defective parts are
tested, the bank comes from the other good parts. squash: the whole part to 224 x 224 (the edge's
resize); letterbox: padded to a square with the part's mean grey, then 224 px; tiles: vertical
thirds, each squashed to 224 px, the part's score is the largest of its tiles. Mean ± std over seeds.
Fit seconds (coreset selection) are wall time on the shared 2-core CPU beside other runs: rough costs.

"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=SRC)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=JSON_OUT)
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = load_parts(args.src)
    print(f"{len(images)} parts ({int(labels.sum())} defective)", flush=True)
    train_cfg = FamiliarityTrainConfig(model=FamiliarityModelConfig(image_size=args.size, standardize=True,
                                                                    backbone="lite2"))
    model = PatchKnnFamiliarity(**train_cfg.model.constructor_kwargs())
    load_imagenet_weights(model.features.backbone, None)
    model.eval()
    rows = []
    for mode in MODES:
        start = time.perf_counter()
        feats = part_features(model, images, mode, args.size)
        print(f"{mode}: features of {feats.shape[0]} parts x {feats.shape[1]} view(s) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        for seed in args.seeds:
            train, test = split_parts(labels, seed)
            scores, seconds = fit_and_score(model, feats, train, test, train_cfg, args.size, seed)
            y = labels[test]
            rows.append({"mode": mode, "seed": seed, "views": int(feats.shape[1]), "auroc": auroc(scores, y),
                         "auprc": auprc(scores, y), "miss_at_5": fnr_at_far(scores, y, 0.05)["fnr"],
                         "fit_seconds": round(seconds, 1), "n_train_parts": int(len(train)),
                         "n_test_good": int((y == 0).sum()), "n_test_defective": int(y.sum())})
            print(json.dumps(rows[-1]), flush=True)
        del feats
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        if not args.no_docs:
            write_section("resize_modes", HEAD + table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
