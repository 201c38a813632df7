"""Re-training the backbone's deeper stages for the patch head (``--tune-from-stage 3``): does it pay?

The product's own code trains both variants of the patch head member on the same split:
``PatchHeadScorer`` with a frozen backbone (20 epochs, constant rate) and with stages 3-4
re-trained from their ImageNet weights (``tune_from_stage=3``, 6 epochs, one-cycle schedule);
both through ``trainer.train_patch_head.fit_head``; and the re-trained one with its loss balanced
over 8 clusters of the images' look (``balance_styles=8``, trainer/patchhead/style_balance.py). Each is also fused with the patch kNN (a random
bank of ``--bank`` patches of the training good images, or their greedy coreset with ``--coreset``, on the
head's standardised input or, ``--knn-input raw``, the image as read; sum of robust z-scores fitted on validation
good images, as ``trainer.hybrid``).

Protocols (``--protocol``):

* ``all-labels``: what a line with every label it has does (and what the bundled demo model is):
  the ELPV cells that are not among the 50 demo cells; 20 % of their good and of their defective
  cells are held out as the test set, 10 % of the good ones as validation, the rest trains (seeded).
  Also reported: the 50 demo cells at the validation images' 95th-percentile threshold.
* ``dra``: the trainers' open-set split (``open_set_split(ds, k, seed, 0.25)``, the DRA protocol of
  docs/benchmarks.md), 20 % of the training good images held out as validation.

Metrics on the test set: image AUROC / AUPRC and the miss rate at 5 % false alarms (threshold =
95th percentile of the test good scores). Frozen stage maps (stages 2 and 4) of every image are
computed once and cached under ``--work``.

    python bench/tuned_head.py --data ../shared/data/elpv --protocol all-labels --seeds 0 1 2
    python bench/tuned_head.py --data ../shared/data/elpv --protocol dra --k 10 --seeds 0 1 2
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.frozen_head import grey_resized, knn_scores, miss_at_5, random_bank, standardised  # noqa: E402
from bench.report import mean_std, write_section  # noqa: E402
from trainer.backbones import load_imagenet_weights  # noqa: E402
from trainer.data import load_dataset, open_set_split  # noqa: E402
from trainer.familiarity.config import FamiliarityTrainConfig  # noqa: E402
from trainer.familiarity.coreset import k_center_greedy  # noqa: E402
from trainer.metrics import auprc, auroc  # noqa: E402
from trainer.patchhead import PatchHeadScorer  # noqa: E402
from trainer.patchhead.config import PatchHeadModelConfig, PatchHeadTrainConfig  # noqa: E402
from trainer.patchhead.style_balance import style_balanced_weights  # noqa: E402
from trainer.train_patch_head import fit_head  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "trainer" / "sample_data" / "elpv_mini" / "images"
VARIANTS = {"frozen": (None, 0), "tuned": (3, 0), "tuned_balanced": (3, 8)}  # (tune_from_stage, balance_styles)


def cached_maps(samples, size: int, work: Path, standardize: bool = True) -> list[torch.Tensor]:
    """Frozen raw maps of stages 2 and 4 (float16) of every sample, cached; the input standardised
    per image (mean 0.5, SD 0.2, as the product's ``--standardize``) or as read (``[0, 1]``)."""
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{size}" if standardize else f"{size}_raw"
    files = [work / f"maps_{tag}_s{s}.npy" for s in (2, 4)]
    listing = work / f"maps_{tag}.txt"
    paths = "\n".join(s.path.as_posix() for s in samples)
    if all(f.is_file() for f in files) and listing.is_file() and listing.read_text() == paths:
        return [torch.from_numpy(np.load(f)) for f in files]
    model = PatchHeadScorer(standardize=False)
    load_imagenet_weights(model.features.backbone)
    model.eval()
    out, start = [[], []], time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(samples), 32):
            batch = np.stack([grey_resized(s.path, size, standardize) for s in samples[i:i + 32]])[:, None]
            for kept, m in zip(out, model.features.stage_maps(torch.from_numpy(batch))):
                kept.append(m.half())
            print(f"\rstage maps {min(i + 32, len(samples))}/{len(samples)} ({time.perf_counter() - start:.0f} s)",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    maps = [torch.cat(o) for o in out]
    for f, m in zip(files, maps):
        np.save(f, m.numpy())
    listing.write_text(paths)
    return maps


def splits(protocol: str, dataset, samples, k: int, seed: int) -> dict:
    index = {s.path: i for i, s in enumerate(samples)}
    rng = np.random.default_rng(seed)
    if protocol == "dra":
        split = open_set_split(dataset, k, seed, test_good_fraction=0.25)
        good = [index[s.path] for s in split.train_good]
        rng.shuffle(good)
        n_val = len(good) // 5
        return {"val": good[:n_val], "fit": good[n_val:], "defective": [index[s.path] for s in split.train_defective],
                "test": [index[s.path] for s in split.test], "demo": []}
    demo_names = {p.name for p in DEMO.iterdir()}
    demo = [i for i, s in enumerate(samples) if s.path.name in demo_names]
    rest = [i for i, s in enumerate(samples) if s.path.name not in demo_names]
    good = [i for i in rest if samples[i].label == 0]
    bad = [i for i in rest if samples[i].label == 1]
    rng.shuffle(good)
    rng.shuffle(bad)
    n_val, n_test, n_bad = len(good) // 10, len(good) // 5, len(bad) // 5
    return {"val": good[:n_val], "test": good[n_val:n_val + n_test] + bad[:n_bad],
            "fit": good[n_val + n_test:], "defective": bad[n_bad:], "demo": demo}


def head_scores(model: PatchHeadScorer, maps: list[torch.Tensor], index: list[int]) -> np.ndarray:
    frozen = [i for i, s in enumerate(model.features.stages) if s in model.frozen_stages()]
    out = []
    with torch.no_grad():
        for i in range(0, len(index), 128):
            part = [maps[j][index[i:i + 128]].float() for j in frozen]
            out.append(model.image_logits(model.patch_logits(model.features_from_maps(part))))
    return torch.cat(out).numpy()


def train_variant(variant: tuple, maps: list[torch.Tensor], sp: dict, seed: int, work: Path) -> PatchHeadScorer:
    tune_from, balance = variant
    config = PatchHeadTrainConfig(model=PatchHeadModelConfig(tune_from_stage=tune_from, heads=1), seed=seed,
                                  balance_styles=balance)
    torch.manual_seed(seed)
    model = PatchHeadScorer(**config.model.constructor_kwargs())
    load_imagenet_weights(model.features.backbone)
    model.eval()
    train = sp["fit"] + sp["defective"]
    if tune_from is None:
        inputs = [model.features.combine([m[train].float() for m in maps]).half()]
    else:
        model.start_tuning()
        inputs = [maps[0][train]]  # stage 2, where the re-trained blocks start
    labels = torch.tensor([0.0] * len(sp["fit"]) + [1.0] * len(sp["defective"]))
    weights = None
    if balance:
        looks = torch.cat([model.features.combine([m[train[i:i + 256]].float() for m in maps]).mean(dim=(2, 3))
                           for i in range(0, len(train), 256)])
        weights, _ = style_balanced_weights(looks, labels, balance, seed)
    fit_head(model, inputs, labels, config, work / "train_log.jsonl", progress=False, weights=weights)
    return model.eval()


def evaluate(maps, samples, sp, protocol: str, k: int, seed: int, bank: int, work: Path,
             variants: list[str], knn_maps: list[torch.Tensor] | None = None, coreset: bool = False) -> list[dict]:
    """Every member and hybrid on one split; the kNN reads ``knn_maps`` (default: the head's maps)."""
    labels = np.array([s.label for s in samples])
    y = labels[sp["test"]]
    extractor = PatchHeadScorer().features
    feats = lambda ix: extractor.combine([m[ix].float() for m in (knn_maps or maps)])  # noqa: E731
    start = time.perf_counter()
    if coreset:   # the product's memory bank: greedy k-center of up to 200,000 random candidates
        candidates = random_bank(feats(sp["fit"]), FamiliarityTrainConfig().max_candidates, seed)
        bank_feats = candidates[k_center_greedy(candidates, bank, seed)]
    else:
        bank_feats = random_bank(feats(sp["fit"]), bank, seed)
    knn = {part: knn_scores(bank_feats, feats(sp[part])).numpy() for part in ("val", "test", "demo") if sp[part]}
    seconds = {"knn": time.perf_counter() - start}
    members = {"knn": knn}
    for name in variants:
        variant = VARIANTS[name]
        start = time.perf_counter()
        model = train_variant(variant, maps, sp, seed, work)
        members[f"head_{name}"] = {part: head_scores(model, maps, sp[part]) for part in ("val", "test", "demo") if sp[part]}
        seconds[f"head_{name}"] = time.perf_counter() - start
    z = standardised({n: {"val": m["val"], "test": m["test"]} for n, m in members.items()})
    zd = standardised({n: {"val": m["val"], "test": m.get("demo", m["val"][:0])} for n, m in members.items()})
    rows = []
    scored = {n: (z[n]["test"], zd[n]["test"], z[n]["val"]) for n in members}
    for name in variants:
        h = f"head_{name}"
        scored[f"hybrid_{name}"] = tuple(a + b for a, b in zip(scored["knn"], scored[h]))
        seconds[f"hybrid_{name}"] = seconds["knn"] + seconds[h]
    for name, (test, demo, val) in scored.items():
        row = {"protocol": protocol, "k": k, "seed": seed, "member": name, "auroc": auroc(test, y),
               "auprc": auprc(test, y), "miss_at_5": miss_at_5(test, y), "seconds": round(seconds[name], 1),
               "n_test_good": int((y == 0).sum()), "n_test_defective": int((y == 1).sum())}
        if sp["demo"]:
            yd = labels[sp["demo"]]
            threshold = np.quantile(val, 0.95)
            row |= {"demo_caught": int((demo[yd == 1] > threshold).sum()), "demo_defective": int((yd == 1).sum()),
                    "demo_false_alarms": int((demo[yd == 0] > threshold).sum()), "demo_good": int((yd == 0).sum())}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    demo = any("demo_caught" in r for r in rows)
    lines = ["| protocol | k | member | seeds | image AUROC | image AUPRC | miss at 5% false alarms | "
             + ("demo caught / FA (each seed) | " if demo else "") + "train s (median) |",
             "|---|---|---|---|---|---|---|" + ("---|" if demo else "") + "---|"]
    for key in sorted({(r["protocol"], r["k"]) for r in rows}):
        for m in dict.fromkeys(r["member"] for r in rows):
            rs = [r for r in rows if (r["protocol"], r["k"]) == key and r["member"] == m]
            if not rs:
                continue
            cells = [key[0], str(key[1]) if key[0] == "dra" else "all", m, str(len(rs)),
                     mean_std([r["auroc"] for r in rs]), mean_std([r["auprc"] for r in rs]),
                     mean_std([r["miss_at_5"] for r in rs])]
            if demo:
                cells.append(", ".join(f"{r['demo_caught']}/{r['demo_false_alarms']}" for r in rs if "demo_caught" in r))
            cells.append(f"{float(np.median([r['seconds'] for r in rs])):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(rows: list[dict], args) -> None:
    load = os.getloadavg()[0]
    write_section(f"tuned_head_{args.protocol.replace('-', '_')}",
                  f"## Patch head with re-trained stages 3-4 ({Path(args.data).name}, {args.protocol}, "
                  f"{args.size} px)\n\nWritten by `bench/tuned_head.py` (its docstring says what runs). "
                  f"head_frozen: the patch head on the frozen backbone; head_tuned: stages 3-4 re-trained "
                  f"with it (`--tune-from-stage 3`); head_tuned_balanced: the same with the loss balanced over 8 "
                  f"clusters of the cells' look (`--balance-styles 8`); hybrid_*: + the patch kNN ("
                  f"{'coreset' if args.coreset else 'random sample'} of {args.bank} patches, {args.knn_input} input), sum of robust z-scores. Seconds on a shared machine (load average "
                  f"{load:.1f} when written): indicative only.\n\n{table(rows)}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data set root (ELPV for --protocol all-labels)")
    p.add_argument("--protocol", choices=["all-labels", "dra"], default="all-labels")
    p.add_argument("--k", type=int, nargs="+", default=[10], help="dra: labelled defective images (default 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bank", type=int, default=4096, help="random kNN bank size in patches (default 4096)")
    p.add_argument("--coreset", action="store_true",
                   help="choose the kNN bank by greedy k-center coreset, as edge-train familiarity does "
                        "(default: a random sample)")
    p.add_argument("--knn-input", choices=["standardised", "raw"], default="standardised",
                   help="the kNN member's input: standardised per image like the head's (default) or as read; "
                        "raw costs a second backbone pass in a deployed hybrid")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="patch head variants to train (default all three)")
    p.add_argument("--work", default="runs/bench_tuned_head", help="stage-map cache folder")
    p.add_argument("--json", default="", help="rows as JSON (default docs/bench/tuned_head_PROTOCOL.json)")
    p.add_argument("--no-docs", action="store_true", help="do not write the docs/benchmarks.md section")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    dataset = load_dataset(args.data)
    samples = sorted(dataset.samples, key=lambda s: s.path.as_posix())
    work = Path(args.work) / Path(args.data).resolve().name
    maps = cached_maps(samples, args.size, work)
    knn_maps = cached_maps(samples, args.size, work, standardize=False) if args.knn_input == "raw" else None
    out_json = Path(args.json or f"docs/bench/tuned_head_{args.protocol}.json")
    rows = []
    for k in (args.k if args.protocol == "dra" else [0]):
        for seed in args.seeds:
            for r in evaluate(maps, samples, splits(args.protocol, dataset, samples, k, seed), args.protocol, k,
                              seed, args.bank, work, args.variants, knn_maps, args.coreset):
                rows.append(r)
                print(json.dumps(r), flush=True)
            # partial results survive an interrupted run: the JSON and the docs table after every seed
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps({"data": Path(args.data).name, "size": args.size, "bank": args.bank,
                                            "knn_input": args.knn_input, "coreset": args.coreset, "rows": rows}, indent=1) + "\n")
            if not args.no_docs:
                write_docs(rows, args)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
