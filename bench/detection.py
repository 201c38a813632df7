"""Detection on ELPV and SDD (issue 11): every member, the floors and the hybrid, DRA protocol.

    python bench/detection.py [--seeds 0 1 2] [--lamp-seeds 0] [--twohead-seeds 0] [--twohead-k 10]
    python bench/detection.py --only-head --data elpv     # just the patch head rows, merged into the JSON

Writes docs/bench/detection.json and the `detection` section of docs/benchmarks.md after every
step, so a partial run leaves partial tables. Each write merges this run's rows into the file as it
is on disk at that moment, under a lock, so runs on different rows may go side by side (with
``--threads 1`` each, two runs use 2 cores better than one run with 2 threads). Runs go to runs/bench_detection/<data>/s<seed>/ and
are reused when complete (delete a folder to retrain it).

Label-free members (patch kNN familiarity, LAMP) are trained once per seed on the k = 0 split;
its good training images and validation hold-out are those of every k (trainer/data/split.py),
and the k-shot test set is the k = 0 test set less the k labelled defects, so their k-shot
figures are their scores restricted to that test set. Members that use labels (two-head) and
hybrids that contain them are trained per k.

The patch head rows (``--head-seeds``; `edge-train patch-head`, frozen features) run with the input
standardised per image, and so does the kNN they are fused with (``patch_knn_std``). ``--only-head``
runs those rows alone and merges them into the rows already in docs/bench/detection.json.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import floors  # noqa: E402
from bench.report import mean_std, median, variant_suffix, write_section  # noqa: E402
from trainer.backbones import VARIANTS  # noqa: E402
from trainer.data import load_dataset, open_set_split  # noqa: E402
from trainer.metrics import auprc, auroc, fnr_at_far  # noqa: E402

DATA = {"elpv": ROOT.parent / "shared" / "data" / "elpv", "sdd": ROOT / "runs" / "data" / "sdd_thirds"}
RUNS = ROOT / "runs" / "bench_detection"
JSON_OUT = ROOT / "docs" / "bench" / "detection.json"
EDGE_TRAIN = [str(ROOT / ".venv" / "bin" / "edge-train")]
SIZE = 224
TWOHEAD_SIZE = 160
SCRATCH_SIZE = 128  # the from-scratch rows' size: the two-head scorer's CPU default before issue 11
BANK_CANDIDATES = 200_000  # candidate patches of a --bank-size coreset (edge-train's default too)
BANK_SIZES = (8192, 16384)  # --bank-size choices
KNN_TOPS = (8,)  # --knn-top choices
THREADS = 2  # --threads: torch threads of each training run
PAPER_AUROC = {  # image AUROC, DRA protocol (../shared/PAPERS.md); PatchCore-WRN50 as AHL reports it (k = 10)
    ("elpv", 10): {"DRA": 0.845, "AHL": 0.850, "PatchCore-WRN50": 0.916}, ("elpv", 1): {"DRA": 0.675, "AHL": 0.828},
    ("sdd", 10): {"DRA": 0.991, "AHL": 0.991, "PatchCore-WRN50": 0.873}, ("sdd", 1): {"DRA": 0.859, "AHL": 0.909}}
PAPERS = {cell: ", ".join(f"{name} {v:.3f}" for name, v in papers.items()) for cell, papers in PAPER_AUROC.items()}
TARGETS = {("elpv", 10): 0.94, ("elpv", 1): 0.92, ("sdd", 10): 0.995, ("sdd", 1): 0.95}
# the rows of edge-train hybrid's defaults (Lite2, standardised, kNN top 8, 3 heads, looks auto) and its kNN alone
DEFAULT_HYBRID_ROW, DEFAULT_KNN_ROW = "hybrid_knn_head_lite2_top8_looks", "patch_knn_std_lite2_top8"


def train(args: list[str], out: Path) -> dict:
    """Run edge-train unless ``out`` already holds a finished run; return its metrics.json."""
    metrics = out / "metrics.json"
    if not metrics.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        subprocess.run([*EDGE_TRAIN, *args, "--out", str(out), "--overwrite", "--quiet", "--threads", str(THREADS)], check=True)
        print(f"  trained {out.relative_to(ROOT)} in {time.perf_counter() - t:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def k_shot_test(dataset, k: int, seed: int) -> set[str]:
    """The k-shot test set of (k, seed): paths relative to the data root."""
    return {s.path.relative_to(dataset.root).as_posix() for s in open_set_split(dataset, k, seed, 0.25).test}


def k_shot_mask(paths, test_paths: set[str], run: Path) -> np.ndarray:
    """Which of a run's scored test ``paths`` lie in the k-shot test set (all of it must be there)."""
    keep = np.array([p in test_paths for p in paths])
    if keep.sum() != len(test_paths):
        raise RuntimeError(f"{run}: its test set does not contain the k-shot test set")
    return keep


def scores_on(run: Path, test_paths: set[str], field: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    z = np.load(run / "test_scores.npz")
    keep = k_shot_mask(z["paths"], test_paths, run)
    return z[field][keep], z["labels"][keep]


def image_row(scores, labels) -> dict:
    return {"auroc": auroc(scores, labels), "auprc": auprc(scores, labels),
            "fnr_at_far_0.05": fnr_at_far(scores, labels, 0.05)["fnr"]}


def pixel_of(metrics: dict) -> dict | None:
    px = metrics["test"].get("pixel")
    return {"pixel_auroc": px["auroc"], "pro": px["pro_fpr0.3"]} if px else None


def bank_suffix(bank: int | None) -> str:
    """Row and folder suffix of a kNN bank other than edge-train's default (4,096 patches of 200,000)."""
    return "" if bank is None else f"_bank{bank}"


def top_suffix(top: int | None) -> str:
    """Row and folder suffix of a kNN image score other than the largest patch distance (``--knn-top``)."""
    return "" if top is None else f"_top{top}"


# kNN rows without "_top<N>" score an image by its largest patch distance: what they were measured with
# before edge-train familiarity's --top-patches default became 8 (2026-12-05, session 17)
KNN_MAX = ["--top-patches", "1"]
# Hybrid rows other than "_looks" use one set of fusion constants: what they were measured with before
# edge-train hybrid's --looks default became auto (2026-12-05, session 16)
ONE_SET = ["--looks", "1"]


def add_run_rows(results: list, name: str, k: int, seed: int, test: set[str], rows, label_free: str) -> None:
    """Add a row per (row name, run folder, metrics) scored on the k-shot ``test`` set. Rows whose name starts
    with ``label_free`` were trained on the k = 0 split: their pixel metrics are over the k = 0 test set."""
    for row, run, m in rows:
        pixel = pixel_of(m)
        replace_row(results, {"data": name, "k": k, "seed": seed, "row": row, **image_row(*scores_on(run, test)),
                              **({"pixel_k0_test" if row.startswith(label_free) else "pixel": pixel} if pixel else {}),
                              "train_seconds": m.get("train", {}).get("seconds")})


def run_head_rows(name: str, seeds, ks, results: list, save, backbone: str = "lite0",
                  bank: int | None = None, looks: bool = False, knn_top: int | None = None) -> None:
    """Per seed: the standardised kNN (k = 0), and per k the patch head and its sum hybrid with that kNN.
    A backbone other than Lite0 suffixes the rows and the run folders with its name; a ``bank`` (coreset
    size, chosen from 200,000 candidate patches) suffixes the kNN and hybrid rows with ``_bank<N>``. ``looks``
    adds the hybrid with per-look fusion constants (``--looks auto``), rows suffixed ``_looks``. ``knn_top``
    scores the kNN by the mean of its ``knn_top`` largest patch distances, rows suffixed ``_top<N>``."""
    data = DATA[name]
    dataset = load_dataset(data)
    base = ["--data", str(data), "--size", str(SIZE), "--standardize", "--backbone", backbone]
    knn_args = [] if bank is None else ["--bank-size", str(bank), "--max-candidates", str(BANK_CANDIDATES)]
    knn_args += KNN_MAX if knn_top is None else ["--top-patches", str(knn_top)]
    suffix = variant_suffix(backbone)
    knn_suffix = suffix + bank_suffix(bank) + top_suffix(knn_top)
    for seed in seeds:
        d = RUNS / name / f"s{seed}"
        knn = d / f"patch_knn_std{knn_suffix}"
        m_knn = train(["familiarity", *base, *knn_args, "--k", "0", "--seed", str(seed)], knn)
        for k in ks:
            test = k_shot_test(dataset, k, seed)
            head = d / f"patch_head{suffix}_k{k}"
            m_head = train(["patch-head", *base, "--k", str(k), "--seed", str(seed)], head)
            hy = d / f"hybrid_knn_head{knn_suffix}_k{k}"
            m_hy = train(["hybrid", "--familiarity", str(knn), "--patch-head", str(head), *ONE_SET], hy)
            rows = [("patch_knn_std" + knn_suffix, knn, m_knn), ("patch_head" + suffix, head, m_head),
                    ("hybrid_knn_head" + knn_suffix, hy, m_hy)]
            if looks:  # the same members fused with per-look constants (edge-train hybrid's default since)
                hy_looks = d / f"hybrid_knn_head{knn_suffix}_looks_k{k}"
                m_looks = train(["hybrid", "--familiarity", str(knn), "--patch-head", str(head), "--looks", "auto"],
                                hy_looks)
                rows.append(("hybrid_knn_head" + knn_suffix + "_looks", hy_looks, m_looks))
            add_run_rows(results, name, k, seed, test, rows, label_free="patch_knn_std")
            save()


def run_ens_rows(name: str, seeds, ks, results: list, save) -> None:
    """Per seed: ENS (input x gradient of the standardised Lite0 kNN, bench/ens_probe.py) and its sum hybrid
    with that kNN, label-free (k = 0 split), scored on each k-shot test set like the other label-free rows."""
    import torch
    from bench import ens_probe
    torch.set_num_threads(THREADS)
    data = DATA[name]
    dataset = load_dataset(data)
    base = ["--data", str(data), "--size", str(SIZE), "--standardize", "--backbone", "lite0", *KNN_MAX]
    for seed in seeds:
        knn = RUNS / name / f"s{seed}" / "patch_knn_std"
        train(["familiarity", *base, "--k", "0", "--seed", str(seed)], knn)
        t = time.perf_counter()
        scores = ens_probe.ens_scores(knn)
        print(f"  ENS scores of {knn.relative_to(ROOT)} in {time.perf_counter() - t:.0f} s", flush=True)
        fused = ens_probe.fused_scores(scores)
        for k in ks:
            keep = k_shot_mask(scores["test_paths"], k_shot_test(dataset, k, seed), knn)
            for row, member in (("ens", "ENS (input x gradient)"),
                                ("hybrid_knn_ens_sum", "hybrid familiarity + ENS (sum)")):
                replace_row(results, {"data": name, "k": k, "seed": seed, "row": row,
                                      **image_row(fused[member][keep], scores["test_labels"][keep])})
        save()


def run_scratch_rows(name: str, seeds, ks, results: list, save) -> None:
    """The former CPU defaults, from scratch (no ImageNet weights): per seed the LAMP autoencoder at
    SCRATCH_SIZE px (k = 0), and per k the two-head scorer on a ResNet-18 of width 16 from scratch
    (SaliencyCut and CutPaste) and its sum hybrid with that LAMP run (the hybrid as it was before issue 11)."""
    data = DATA[name]
    dataset = load_dataset(data)
    small = ["--data", str(data), "--size", str(SCRATCH_SIZE)]
    for seed in seeds:
        d = RUNS / name / f"s{seed}"
        lamp = d / f"lamp_{SCRATCH_SIZE}"
        m_lamp = train(["ae", *small, "--k", "0", "--seed", str(seed), "--epochs", "10"], lamp)
        for k in ks:
            test = k_shot_test(dataset, k, seed)
            rows = [(f"lamp_{SCRATCH_SIZE}", lamp, m_lamp)]
            for aug in ("saliencycut", "cutpaste"):
                tag = "" if aug == "saliencycut" else f"_{aug}"
                sc = d / f"two_head_scratch{tag}_k{k}"
                rows.append((f"two_head_scratch{tag}", sc, train(
                    ["scorer", *small, "--backbone", "resnet18", "--k", str(k), "--seed", str(seed),
                     "--augmentation", aug], sc)))
            hy = d / f"hybrid_twohead_scratch_lamp_k{k}"
            rows.append(("hybrid_twohead_scratch_lamp_sum", hy, train(
                ["hybrid", "--ae", str(lamp), "--scorer", str(d / f"two_head_scratch_k{k}"), "--fusion", "sum",
                 *ONE_SET], hy)))
            add_run_rows(results, name, k, seed, test, rows, label_free="lamp")
            save()


def merge_into_file(path: Path, rows: list) -> list:
    """Write ``rows`` (this run's) into the JSON at ``path`` as it is on disk now, under a lock, each
    replacing the row of its key; return every row the file then holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be saving its rows right now
        on_disk = json.loads(path.read_text()) if path.exists() else []
        for row in rows:
            replace_row(on_disk, row)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(on_disk, indent=1) + "\n")
        tmp.replace(path)  # atomic: a run starting now reads the old file or the new one
    return on_disk


def replace_row(results: list, row: dict) -> None:
    key = tuple(row[f] for f in ("data", "k", "seed", "row"))
    results[:] = [r for r in results if tuple(r[f] for f in ("data", "k", "seed", "row")) != key] + [row]


def run_dataset(name: str, seeds, lamp_seeds, twohead_seeds, twohead_ks, ks, results: list, save,
                augmentations=("saliencycut",)) -> None:
    data = DATA[name]
    dataset = load_dataset(data)
    base = ["--data", str(data), "--size", str(SIZE)]
    # the rows' kNN as labelled and first measured (2026-12-02): Lite0, raw input, a coreset drawn from 50,000
    # candidate patches (edge-train's defaults then; they became lite2, standardised and 200,000 since)
    as_measured = ["--backbone", "lite0", "--no-standardize", "--max-candidates", "50000", *KNN_MAX]
    for seed in seeds:
        d = RUNS / name / f"s{seed}"
        label_free = {}
        m = train(["familiarity", *base, *as_measured, "--k", "0", "--seed", str(seed)], d / "patch_knn")
        label_free["patch_knn"] = (d / "patch_knn", m)
        if seed in lamp_seeds:
            m = train(["ae", *base, "--k", "0", "--seed", str(seed), "--epochs", "10"], d / "lamp")
            label_free["lamp"] = (d / "lamp", m)
            for rule in ("sum", "max"):
                m = train(["hybrid", "--familiarity", str(d / "patch_knn"), "--ae", str(d / "lamp"),
                           "--fusion", rule, *ONE_SET], d / f"hybrid_knn_lamp_{rule}")
                label_free[f"hybrid_knn_lamp_{rule}"] = (d / f"hybrid_knn_lamp_{rule}", m)
        for k in ks:
            test = k_shot_test(dataset, k, seed)
            for row, (run, metrics) in label_free.items():
                replace_row(results, {"data": name, "k": k, "seed": seed, "row": row, **image_row(*scores_on(run, test)),
                                **({"pixel_k0_test": pixel_of(metrics)} if pixel_of(metrics) else {}),
                                "train_seconds": metrics.get("train", {}).get("seconds")})
            if seed in twohead_seeds and k in twohead_ks:
                # the two-head scorer costs (size / 8)^2 per step: it runs at TWOHEAD_SIZE, and so do the
                # members it is fused with
                small = ["--data", str(data), "--size", str(TWOHEAD_SIZE), "--seed", str(seed)]
                knn = d / f"patch_knn_{TWOHEAD_SIZE}"
                m = train(["familiarity", *small, *as_measured, "--k", "0"], knn)
                replace_row(results, {"data": name, "k": k, "seed": seed, "row": f"patch_knn_{TWOHEAD_SIZE}",
                                **image_row(*scores_on(knn, test)), "train_seconds": m["train"]["seconds"]})
                for aug in augmentations:   # SaliencyCut (the product's default) and DRA's CutPaste
                    tag = "" if aug == "saliencycut" else f"_{aug}"
                    sc = d / f"two_head{tag}_k{k}"
                    m = train(["scorer", *small, "--k", str(k), "--augmentation", aug], sc)
                    replace_row(results, {"data": name, "k": k, "seed": seed, "row": f"two_head{tag}",
                                          **image_row(*scores_on(sc, test)), "train_seconds": m["train"]["seconds"]})
                    for rule in ("sum", "max") if aug == "saliencycut" else ("sum",):
                        hy = d / f"hybrid_knn_twohead{tag}_k{k}_{rule}"
                        m = train(["hybrid", "--familiarity", str(knn), "--scorer", str(sc), "--fusion", rule,
                                   *ONE_SET], hy)
                        replace_row(results, {"data": name, "k": k, "seed": seed,
                                              "row": f"hybrid_knn_twohead{tag}_{rule}", **image_row(*scores_on(hy, test)),
                                              **({"pixel": pixel_of(m)} if pixel_of(m) else {})})
            save()
    for k in ks:
        for row in floors.evaluate(dataset, k, seeds):
            replace_row(results, {"data": name, "k": k, "seed": row["seed"], "row": f"floor_{row['method']}",
                            "auroc": row["auroc"], "auprc": row["auprc"]})
    save()


ROW_NAMES = {
    "floor_knn": "floor: raw-pixel kNN (64 px)", "floor_pca": "floor: PCA reconstruction (64 px)",
    "lamp": "LAMP autoencoder alone (exp a=10, 10 epochs)", "patch_knn": "familiarity: patch kNN on Lite0 (no labels)",
    "patch_knn_160": "familiarity: patch kNN on Lite0, 160 px", "two_head": "two-head + SaliencyCut on Lite0, 160 px",
    "hybrid_knn_lamp_sum": "hybrid patch kNN + LAMP (sum)", "hybrid_knn_lamp_max": "hybrid patch kNN + LAMP (max)",
    "two_head_cutpaste": "two-head + CutPaste (DRA-style) on Lite0, 160 px",
    "hybrid_knn_twohead_cutpaste_sum": "hybrid patch kNN + two-head CutPaste, 160 px (sum)",
    "hybrid_knn_twohead_sum": "hybrid patch kNN + two-head, 160 px (sum)",
    "hybrid_knn_twohead_max": "hybrid patch kNN + two-head, 160 px (max)",
    "patch_knn_std": "familiarity: patch kNN, input standardised (no labels)",
    "patch_head": "patch head on frozen Lite0, input standardised",
    "hybrid_knn_head": "hybrid patch kNN + patch head, standardised (sum)",
    "ens": "ENS: input x gradient of the standardised Lite0 kNN (no labels)",
    "hybrid_knn_ens_sum": "hybrid standardised Lite0 kNN + ENS (sum, no labels)",
    f"lamp_{SCRATCH_SIZE}": f"from scratch: LAMP autoencoder alone, {SCRATCH_SIZE} px (exp a=10, 10 epochs)",
    "two_head_scratch": f"from scratch: two-head + SaliencyCut, ResNet-18 of width 16, {SCRATCH_SIZE} px",
    "two_head_scratch_cutpaste": f"from scratch: two-head + CutPaste, ResNet-18 of width 16, {SCRATCH_SIZE} px",
    "hybrid_twohead_scratch_lamp_sum": f"from scratch: hybrid two-head (SaliencyCut) + LAMP, {SCRATCH_SIZE} px (sum)"}
# the patch head rows on a larger backbone (--backbone): every variant gets its labels, so no row is left out
for _variant in (v for v in sorted(VARIANTS) if v != "lite0"):
    _name = _variant.capitalize()
    ROW_NAMES |= {f"patch_knn_std_{_variant}": f"familiarity: patch kNN on {_name}, input standardised (no labels)",
                  f"patch_head_{_variant}": f"patch head on frozen {_name}, input standardised",
                  f"hybrid_knn_head_{_variant}": f"hybrid patch kNN + patch head on {_name}, standardised (sum)"}
# measured before edge-train's --max-candidates default went from 50,000 to 200,000 (2026-12-04)
for _variant in ("lite0", "lite2"):
    for _key in (f"patch_knn_std{variant_suffix(_variant)}", f"hybrid_knn_head{variant_suffix(_variant)}"):
        ROW_NAMES[f"{_key}_c50k"] = ROW_NAMES[_key] + ", coreset of 50,000 candidates (the old default)" + (
            ", one head" if _key.startswith("hybrid") else "")
# measured before edge-train patch-head's --heads default went from 1 to 3 (2026-12-05)
for _variant in ("lite0", "lite2"):
    for _key in (f"patch_head{variant_suffix(_variant)}", f"hybrid_knn_head{variant_suffix(_variant)}"):
        ROW_NAMES[f"{_key}_h1"] = ROW_NAMES[_key] + ", one head (the old default)"
# the same members fused with per-look constants (--looks auto, 2026-12-05)
for _variant in sorted(VARIANTS):
    _key = f"hybrid_knn_head{variant_suffix(_variant)}"
    if _key in ROW_NAMES:
        ROW_NAMES[f"{_key}_looks"] = ROW_NAMES[_key].replace("(sum)", "(sum), per-look constants (--looks auto)")
# larger coresets (--bank-size): the kNN and its hybrid per variant
for _variant in sorted(VARIANTS):
    for _bank in BANK_SIZES:
        _tag, _on = bank_suffix(_bank), "" if _variant == "lite0" else f" on {_variant.capitalize()}"
        _vs = variant_suffix(_variant)
        ROW_NAMES |= {f"patch_knn_std{_vs}{_tag}":
                      f"familiarity: patch kNN{_on}, standardised, {_bank:,}-patch coreset (no labels)",
                      f"hybrid_knn_head{_vs}{_tag}":
                      f"hybrid patch kNN ({_bank:,}-patch coreset) + patch head{_on}, standardised (sum)"}
        ROW_NAMES[f"hybrid_knn_head{_vs}{_tag}_h1"] = ROW_NAMES[f"hybrid_knn_head{_vs}{_tag}"] + ", one head"
# the kNN scored by the mean of its largest patch distances (--knn-top; edge-train's default 8 since session 17)
for _variant in sorted(VARIANTS):
    _vs = variant_suffix(_variant)
    for _top in KNN_TOPS:
        _tag = top_suffix(_top)
        for _base, _tail in ((f"patch_knn_std{_vs}", ""), (f"hybrid_knn_head{_vs}", ""),
                             (f"hybrid_knn_head{_vs}", "_looks")):
            if _base + _tail in ROW_NAMES:
                ROW_NAMES[_base + _tag + _tail] = \
                    ROW_NAMES[_base + _tail] + f", kNN image score = mean of the {_top} largest patch distances"


def glance(results: list) -> str:
    """One line per cell: the papers' image AUROC beside the target and edge-train hybrid's defaults (mean of
    the seeds measured)."""
    names = list(dict.fromkeys(n for papers in PAPER_AUROC.values() for n in papers))
    lines = ["\n**At a glance** (image AUROC; the default: `edge-train hybrid` as it ships, its kNN member "
             "alone needs no labels)\n",
             "| cell | " + " | ".join(names) + " | target | the default hybrid | its kNN alone | target met |",
             "|---|" + "---|" * (len(names) + 4)]
    for (data, k), papers in PAPER_AUROC.items():
        pick = lambda row: [r["auroc"] for r in results if r["data"] == data and r["k"] == k and r["row"] == row]
        hybrid, knn = pick(DEFAULT_HYBRID_ROW), pick(DEFAULT_KNN_ROW)
        if not hybrid:
            continue
        mean = sum(hybrid) / len(hybrid)
        met = "yes" if mean >= TARGETS[(data, k)] else "**no**"
        lines.append(f"| {data.upper()} k = {k} | " + " | ".join(f"{papers[n]:.3f}" if n in papers else "-"
                                                               for n in names)
                     + f" | {TARGETS[(data, k)]} | {mean_std(hybrid)} | {mean_std(knn) if knn else ''} | {met} |")
    return "\n".join(lines)


def table(results: list) -> str:
    lines = []
    for data in ("elpv", "sdd"):
        for k in (10, 1):
            rows = [r for r in results if r["data"] == data and r["k"] == k]
            if not rows:
                continue
            lines += [f"\n**{data.upper()}, k = {k}** (target {TARGETS[(data, k)]}; papers: {PAPERS[(data, k)]})\n",
                      "| model | seeds | image AUROC | image AUPRC | miss rate at 5% false alarms | pixel AUROC | PRO | train s (median) |",
                      "|---|---|---|---|---|---|---|---|"]
            for key, label in ROW_NAMES.items():
                sel = sorted((r for r in rows if r["row"] == key), key=lambda r: r["seed"])
                if not sel:
                    continue
                px = [r.get("pixel") or r.get("pixel_k0_test") for r in sel]
                px = [p for p in px if p]
                fnr = [r["fnr_at_far_0.05"] for r in sel if "fnr_at_far_0.05" in r]
                secs = [r["train_seconds"] for r in sel if r.get("train_seconds")]
                cells = [label, ",".join(str(r["seed"]) for r in sel), mean_std(r["auroc"] for r in sel),
                         mean_std(r["auprc"] for r in sel), mean_std(fnr) if fnr else "",
                         mean_std(p["pixel_auroc"] for p in px) if px else "",
                         mean_std(p["pro"] for p in px) if px else "", f"{median(secs):.0f}" if secs else ""]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEAD = f"""## Detection on ELPV and SDD (`bench/detection.py`, issue 11)

DRA protocol (open-set split, trainer/data/split.py): test = 25% of the good images + the defective
ones not drawn for training; SDD = KolektorSDD cut into vertical thirds (`make sdd-data`: 1,143 good /
54 defective crops). Every learned member runs at {SIZE} px grey (three equal channels into
EfficientNet-Lite0), except the two-head scorer and the hybrid it is in, at 160 px (its CPU default:
a step costs (size / 8)^2), and the "from scratch" rows, at {SCRATCH_SIZE} px: the CPU defaults before
issue 11 (two-head on a ResNet-18 of width 16 without ImageNet weights, output stride 16; LAMP 10
epochs), the old hybrid of the two. ENS = input x gradient of the standardised Lite0 kNN's mean
patch distance (bench/ens_probe.py). Label-free rows (floors, patch kNN, LAMP, ENS, their hybrids)
are trained on the k = 0 split and scored on each k-shot test set; pixel metrics of label-free rows
are over the k = 0 test set. The miss rate is the share of defective test images at or below the threshold that flags
5% of the good test images. Mean ± std over the seeds listed. Train times are wall seconds on the
shared 2-core CPU with other work running at times: read them as rough costs, not benchmarks.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["elpv", "sdd"], choices=list(DATA))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lamp-seeds", nargs="*", type=int, default=[0])
    p.add_argument("--twohead-seeds", nargs="*", type=int, default=[0])
    p.add_argument("--twohead-k", nargs="*", type=int, default=[10])
    p.add_argument("--twohead-data", nargs="*", default=list(DATA), help="data sets the two-head rows run on")
    p.add_argument("--twohead-only", nargs="*", default=None, metavar="DATA:K",
                   help="run the two-head rows only for these data:k pairs (e.g. elpv:10 elpv:1 sdd:10)")
    p.add_argument("--ks", nargs="+", type=int, default=[10, 1])
    p.add_argument("--threads", type=int, default=2, help="torch threads per training run (1 beside other work)")
    p.add_argument("--head-seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds of the patch head rows")
    p.add_argument("--twohead-augmentations", nargs="+", default=["saliencycut"], choices=["saliencycut", "cutpaste"],
                   help="pseudo-defect generators of the two-head rows (cutpaste: DRA's baseline)")
    p.add_argument("--fresh", action="store_true", help="start docs/bench/detection.json over instead of merging into it")
    p.add_argument("--backbone", default="lite0", choices=sorted(VARIANTS),
                   help="EfficientNet-Lite variant of the patch head rows (default lite0; others add rows)")
    p.add_argument("--bank-size", type=int, choices=BANK_SIZES, default=None,
                   help="coreset size of the patch head rows' kNN, chosen from 200,000 candidate patches "
                        "(default: edge-train's, 4,096 of 200,000); adds rows suffixed _bank<N>")
    p.add_argument("--looks", action="store_true",
                   help="also fuse the patch head rows' members with per-look constants (edge-train hybrid "
                        "--looks auto); adds rows suffixed _looks")
    p.add_argument("--knn-top", type=int, choices=KNN_TOPS, default=None,
                   help="score the patch head rows' kNN by the mean of its N largest patch distances (edge-train "
                        "familiarity --top-patches N); adds rows suffixed _top<N> (default: the largest, as measured)")
    p.add_argument("--ens", action="store_true",
                   help="run only the ENS rows (bench/ens_probe.py's score on the k-shot test sets) and merge them")
    p.add_argument("--scratch", action="store_true",
                   help="run only the from-scratch rows (LAMP, two-head on a ResNet-18 from scratch, their hybrid; "
                        f"{SCRATCH_SIZE} px, the CPU defaults before issue 11) and merge them")
    p.add_argument("--only-head", action="store_true",
                   help="run only the patch head rows, keeping the other rows of docs/bench/detection.json")
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads
    if "sdd" in args.data and not (DATA["sdd"] / ".prepared.json").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "prepare_sdd.py"), "--out", str(DATA["sdd"])], check=True)
    # rows are merged into the existing JSON by (data, k, seed, row): a run adds or replaces its rows
    if args.fresh:
        JSON_OUT.unlink(missing_ok=True)
    results: list = []  # this run's rows only: the rows of other runs are never written back from memory

    def save():
        merged = merge_into_file(JSON_OUT, results)
        write_section("detection", HEAD + glance(merged) + "\n" + table(merged))

    for name in args.data:
        if args.ens or args.scratch:
            if args.ens:
                run_ens_rows(name, args.seeds, args.ks, results, save)
            if args.scratch:
                run_scratch_rows(name, args.seeds, args.ks, results, save)
            continue
        if args.only_head:
            run_head_rows(name, args.head_seeds, args.ks, results, save, args.backbone, args.bank_size, args.looks,
                          args.knn_top)
            continue
        ks = args.twohead_k if args.twohead_only is None else \
            [int(pair.split(":")[1]) for pair in args.twohead_only if pair.split(":")[0] == name]
        run_dataset(name, args.seeds, args.lamp_seeds, args.twohead_seeds if name in args.twohead_data else [],
                    ks, args.ks, results, save, args.twohead_augmentations)
        run_head_rows(name, args.head_seeds, args.ks, results, save)
    print(table(json.loads(JSON_OUT.read_text()) if JSON_OUT.exists() else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
