"""``edge-train``: train edge-inspect models into run directories.

  edge-train ae --data DIR --out runs/NAME              LAMP autoencoder on good images (novelty)
  edge-train scorer --data DIR --k 10 --out runs/NAME   two-head scorer with SaliencyCut (familiarity)
  edge-train hybrid --ae RUN --scorer RUN --out RUN     fuse the two into one hybrid model
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
    sub = p.add_subparsers(dest="command", required=True, metavar="{ae,scorer,hybrid}")
    ae = sub.add_parser("ae", help="train the LAMP autoencoder on good images", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the LAMP autoencoder (arXiv 2308.14595) on the good images of an "
                                    "open-set split, then evaluate it on the held-out test split.")
    add_data_arguments(ae, default_k=0)
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
    add_output_arguments(ae)
    add_scorer_parser(sub)
    hy = sub.add_parser(
        "hybrid", help="fuse a LAMP run and a two-head run into one hybrid model (familiarity + novelty)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fuse a LAMP autoencoder run (novelty) and a two-head scorer run (familiarity), trained on "
                    "the same data with the same --seed and --size, into one hybrid model. The fusion is fitted "
                    "on their shared validation good images only (docs/twohead.md), and the hybrid is evaluated "
                    "on the scorer's test split.",
        epilog="example:\n  edge-train ae --data D --size 128 --seed 0 --out runs/ae\n"
               "  edge-train scorer --data D --k 10 --seed 0 --out runs/sc\n"
               "  edge-train hybrid --ae runs/ae --scorer runs/sc --out runs/hybrid")
    hy.add_argument("--ae", type=Path, required=True, help="LAMP autoencoder run directory")
    hy.add_argument("--scorer", type=Path, required=True, help="two-head scorer run directory")
    hy.add_argument("--data", type=Path, default=None, help="data folder, if it moved since training")
    hy.add_argument("--out", type=Path, required=True, help="hybrid run directory to create")
    hy.add_argument("--overwrite", action="store_true", help="replace an existing run directory's files")
    return p


def run_hybrid(args: argparse.Namespace) -> dict:
    from trainer.hybrid import build_hybrid
    return build_hybrid(args.ae, args.scorer, args.out, args.data, args.overwrite)


def add_data_arguments(parser: argparse.ArgumentParser, default_k: int) -> None:
    d = parser.add_argument_group("data")
    d.add_argument("--data", type=Path, required=True, help="data set folder")
    d.add_argument("--layout", default="auto", choices=["auto", "mvtec", "elpv", "folders"])
    d.add_argument("--k", type=int, default=default_k,
                   help=f"labelled defective images moved into the training split (0, 1, 5, 10; default {default_k})")
    d.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and batches")
    d.add_argument("--test-good-fraction", type=float, default=0.25,
                   help="share of good images held out for testing (elpv/folders layouts; default 0.25)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    o = parser.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, help="run directory to create")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run directory's files")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


SCORER_EPILOG = """\
examples:
  # ELPV, 10 labelled defective cells, SaliencyCut pseudo defects (CPU-sized defaults)
  edge-train scorer --data ../shared/data/elpv --k 10 --out runs/elpv-sc-k10
  # the DRA-style plain cut/paste baseline
  edge-train scorer --data ../shared/data/elpv --k 10 --augmentation cutpaste --out runs/elpv-cp-k10
  # the papers' GPU-sized setting, from ImageNet weights stored on disk (torchvision layout)
  edge-train scorer --data DIR --k 10 --size 448 --width 64 --output-stride 32 --scales 1 0.5 \\
      --pretrained resnet18.pth --out runs/gpu

The defaults (128 px, width 16, output stride 16, one scale, 10 epochs) fit a 2-core CPU;
docs/twohead.md says what they change against the papers' setting.
"""


def add_scorer_parser(sub) -> None:
    sc = sub.add_parser("scorer", help="train the two-head scorer (SaliencyCut) on good images + k defects",
                        epilog=SCORER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the two-head scorer (normal head + anomaly head with the patch-wise "
                                    "residual module; DRA/SaliencyCut) on good images, k labelled defects and "
                                    "pseudo defects, then evaluate it on the held-out test split.")
    add_data_arguments(sc, default_k=10)
    m = sc.add_argument_group("model")
    m.add_argument("--size", type=int, default=128, help="input size in pixels (default 128; papers: 448)")
    m.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    m.add_argument("--width", type=int, default=16, help="ResNet-18 first-stage channels (default 16; papers: 64)")
    m.add_argument("--output-stride", type=int, default=16, choices=[16, 32],
                   help="backbone output stride (default 16; papers: 32)")
    m.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="input scales whose head scores are averaged (default 1.0; papers: 1.0 0.5)")
    m.add_argument("--pretrained", type=Path, default=None,
                   help="local ResNet-18 state dict (torchvision layout, needs --width 64); default: from scratch")
    t = sc.add_argument_group("training")
    t.add_argument("--augmentation", default="saliencycut", choices=["saliencycut", "cutpaste"],
                   help="pseudo-defect generator (default saliencycut; cutpaste = DRA-style baseline)")
    t.add_argument("--epochs", type=int, default=10, help="epochs of --steps-per-epoch steps (default 10; papers: 30)")
    t.add_argument("--steps-per-epoch", type=int, default=20)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--lr-step-epochs", type=int, default=10, help="StepLR period in epochs (gamma 0.1)")
    t.add_argument("--n-normal", type=int, default=32, help="good images per batch")
    t.add_argument("--n-anomaly", type=int, default=16, help="labelled defects per batch (cycled through the k)")
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_output_arguments(sc)


def run_scorer(args: argparse.Namespace) -> dict:
    from trainer.config import ScorerModelConfig, ScorerTrainConfig
    from trainer.train_scorer import train_scorer
    from trainer.twohead.torch_model import TwoHeadScorer

    config = ScorerTrainConfig(
        model=ScorerModelConfig(in_channels=args.channels, image_size=args.size, width=args.width,
                                output_stride=args.output_stride, scales=tuple(args.scales)),
        augmentation=args.augmentation, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        n_normal=args.n_normal, n_anomaly=args.n_anomaly, lr=args.lr, lr_step_epochs=args.lr_step_epochs,
        val_fraction=args.val_fraction, seed=args.seed, threads=args.threads,
        pretrained=str(args.pretrained) if args.pretrained else None)
    # a dry forward pass rejects sizes the residual module cannot use before any data is read
    import torch
    with torch.no_grad():
        TwoHeadScorer(**config.model.constructor_kwargs()).eval()(
            torch.zeros(1, args.channels, args.size, args.size))
    dataset, split = load_split(args)
    return train_scorer(config, dataset, split, args.out, progress=not args.quiet)


def load_split(args: argparse.Namespace):
    from trainer.data import load_dataset, open_set_split
    from trainer.train_ae import RUN_FILES

    existing = [f for f in RUN_FILES if (args.out / f).exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"edge-train: {args.out} already holds a run ({', '.join(existing)}); "
                         f"choose another --out or pass --overwrite")
    dataset = load_dataset(args.data, args.layout)
    split = open_set_split(dataset, args.k, args.seed, args.test_good_fraction)
    print(f"edge-train {args.command}: {dataset.layout} data at {dataset.root}: "
          f"{len(split.train)} train ({sum(s.label for s in split.train)} labelled defective), "
          f"{len(split.test)} test; skipped {dict(dataset.skipped) or 'none'}", file=sys.stderr)
    return dataset, split


def run_ae(args: argparse.Namespace) -> dict:
    # imported here so that `edge-train --help` is instant
    from trainer.config import AeTrainConfig, AutoencoderConfig
    from trainer.train_ae import train_autoencoder

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
    dataset, split = load_split(args)
    return train_autoencoder(config, dataset, split, args.out, progress=not args.quiet)


def summary_lines(metrics: dict, out: Path) -> list[str]:
    img, tr = metrics["test"]["image"], metrics.get("train")
    lines = [f"run: {out}",
             f"test image AUROC {img['auroc']:.4f}  AUPRC {img['auprc']:.4f}  "
             f"({img['n_good']} good, {img['n_defective']} defective)"]
    if "fnr_at_far_0.05" in metrics["test"]:
        c, f = metrics["components"], metrics["test"]["fnr_at_far_0.05"]
        lines.append(f"familiarity alone AUROC {c['familiarity']['auroc']:.4f}, novelty alone "
                     f"{c['novelty']['auroc']:.4f}; miss rate at 5% false alarms: hybrid {f['fnr']:.3f}, "
                     f"familiarity {c['familiarity']['fnr_at_far_0.05']['fnr']:.3f}")
    if metrics["test"]["pixel"]:
        px = metrics["test"]["pixel"]
        lines.append(f"test pixel AUROC {px['auroc']:.4f}  PRO(FPR<=0.3) {px['pro_fpr0.3']:.4f}")
    else:
        lines.append(f"pixel metrics: {metrics['test']['pixel_note']}")
    if tr:
        lines.append(f"train {tr['seconds']:.1f} s, {tr['images_per_second']:.1f} images/s, "
                     f"peak memory {tr['peak_rss_mb']:.0f} MB")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = {"ae": run_ae, "scorer": run_scorer, "hybrid": run_hybrid}[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        # data-layer and config errors already name the file/flag and what to do
        print(f"edge-train: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(metrics, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
