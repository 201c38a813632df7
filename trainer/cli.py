"""``edge-train``: train edge-inspect models into run directories.

  edge-train ae --data DIR --out runs/NAME      LAMP autoencoder on good images
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from trainer.lamp.amplifier import AMPLIFIERS, AmplifierConfig
from trainer.lamp.anomaly_map import POOLINGS, AnomalyMapConfig

EPILOG = """\
examples:
  # the embedded sample (50 ELPV solar cells), small and quick on a laptop CPU
  edge-train ae --data trainer/sample_data/elpv_mini --size 64 --epochs 15 --out runs/demo
  # ELPV, 10 labelled defects in the split (the autoencoder itself learns good cells only)
  edge-train ae --data ../shared/data/elpv --k 10 --size 128 --out runs/elpv-lamp
  # the same without loss amplification (plain MSE), for comparison
  edge-train ae --data ../shared/data/elpv --k 10 --size 128 --amplifier identity --out runs/elpv-mse

data layouts (--layout auto detects them; see docs/data.md):
  mvtec    DIR/train/good, DIR/test/good, DIR/test/<defect>/, optional DIR/ground_truth/<defect>/<stem>_mask.png
  elpv     DIR/labels.csv + images (uncertain grades 1/3, 2/3 are excluded and counted)
  folders  DIR/good/ + one folder per defect type (+ optional DIR/masks/<defect>/)

the run directory gets config.json, split.json, train_log.jsonl, checkpoint.pt, metrics.json
(docs/run-directory.md).
"""


def default_depth(size: int) -> int:
    """Stages that bring ``size`` down to an 8x8 bottleneck."""
    return max(1, int(math.log2(max(size, 16) / 8)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{ae}")
    ae = sub.add_parser("ae", help="train the LAMP autoencoder on good images", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the LAMP autoencoder (arXiv 2308.14595) on the good images of an "
                                    "open-set split, then evaluate it on the held-out test split.")
    d = ae.add_argument_group("data")
    d.add_argument("--data", type=Path, required=True, help="data set folder")
    d.add_argument("--layout", default="auto", choices=["auto", "mvtec", "elpv", "folders"])
    d.add_argument("--k", type=int, default=0,
                   help="labelled defective images moved into the training split (0, 1, 5, 10; default 0)")
    d.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and batches")
    d.add_argument("--test-good-fraction", type=float, default=0.25,
                   help="share of good images held out for testing (elpv/folders layouts; default 0.25)")
    m = ae.add_argument_group("model")
    m.add_argument("--size", type=int, default=256, help="model input size in pixels (square; default 256)")
    m.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    m.add_argument("--base-channels", type=int, default=16)
    m.add_argument("--depth", type=int, default=None, help="stride-2 stages (default: down to 8x8)")
    m.add_argument("--latent-channels", type=int, default=32)
    t = ae.add_argument_group("training")
    t.add_argument("--amplifier", default="exp", choices=AMPLIFIERS,
                   help="loss amplifier (LAMP); 'identity' = plain MSE (default exp)")
    t.add_argument("--alpha", type=float, default=10.0, help="steepness of the 'exp' amplifier (default 10)")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--no-flip", action="store_true", help="disable random flip augmentation")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of good training images held out for synthetic-defect validation")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    s = ae.add_argument_group("scoring")
    s.add_argument("--blur-sigma", type=float, default=4.0, help="anomaly-map Gaussian sigma in pixels")
    s.add_argument("--pooling", default="topk_mean", choices=POOLINGS)
    s.add_argument("--topk-fraction", type=float, default=0.01)
    o = ae.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, help="run directory to create")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run directory's files")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_ae(args: argparse.Namespace) -> dict:
    # imported here so that `edge-train --help` is instant
    from trainer.config import AeTrainConfig, AutoencoderConfig
    from trainer.data import load_dataset, open_set_split
    from trainer.train_ae import RUN_FILES, train_autoencoder

    existing = [f for f in RUN_FILES if (args.out / f).exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"edge-train: {args.out} already holds a run ({', '.join(existing)}); "
                         f"choose another --out or pass --overwrite")
    config = AeTrainConfig(
        model=AutoencoderConfig(in_channels=args.channels, image_size=args.size,
                                base_channels=args.base_channels,
                                depth=args.depth if args.depth is not None else default_depth(args.size),
                                latent_channels=args.latent_channels),
        amplifier=AmplifierConfig(args.amplifier, args.alpha),
        anomaly_map=AnomalyMapConfig(args.blur_sigma, args.pooling, args.topk_fraction),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, flip_augment=not args.no_flip,
        val_fraction=args.val_fraction, seed=args.seed, threads=args.threads)
    # build the model once up front so a bad size/depth fails before any data is read
    from trainer.lamp import LampAutoencoder
    LampAutoencoder(**config.to_dict()["model"])
    dataset = load_dataset(args.data, args.layout)
    split = open_set_split(dataset, args.k, args.seed, args.test_good_fraction)
    print(f"edge-train ae: {dataset.layout} data at {dataset.root}: "
          f"{len(split.train)} train ({sum(s.label for s in split.train)} labelled defective), "
          f"{len(split.test)} test; skipped {dict(dataset.skipped) or 'none'}", file=sys.stderr)
    return train_autoencoder(config, dataset, split, args.out, progress=not args.quiet)


def summary_lines(metrics: dict, out: Path) -> list[str]:
    img, tr = metrics["test"]["image"], metrics["train"]
    lines = [f"run: {out}",
             f"test image AUROC {img['auroc']:.4f}  AUPRC {img['auprc']:.4f}  "
             f"({img['n_good']} good, {img['n_defective']} defective)"]
    if metrics["test"]["pixel"]:
        px = metrics["test"]["pixel"]
        lines.append(f"test pixel AUROC {px['auroc']:.4f}  PRO(FPR<=0.3) {px['pro_fpr0.3']:.4f}")
    else:
        lines.append(f"pixel metrics: {metrics['test']['pixel_note']}")
    lines.append(f"train {tr['seconds']:.1f} s, {tr['images_per_second']:.1f} images/s, "
                 f"peak memory {tr['peak_rss_mb']:.0f} MB")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = run_ae(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # data-layer and config errors already name the file/flag and what to do
        print(f"edge-train: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(metrics, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
