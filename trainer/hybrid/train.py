"""Fuse trained member runs into one hybrid run directory (``edge-train hybrid``).

The members must share data, good training images, validation hold-out and input format;
the fusion is fitted on that hold-out (good images only) and the hybrid is evaluated on the
test split of the member trained with the most labelled defects (none of them is in it).
Every member is evaluated on that same test set too (metrics.json "members").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.artifacts import RUN_FORMAT_VERSION, read_json, sha256_file, write_json
from trainer.checkpoint import (FAMILIARITY_KIND, HYBRID_KIND, LAMP_KIND, PATCH_HEAD_KIND, SCORER_KIND, build_model,
                                read_checkpoint, write_payload)
from trainer.evaluate import evaluate_split, image_metrics
from trainer.hybrid.fusion import describe_choice, fit_fusion
from trainer.hybrid.torch_model import HybridDetector
from trainer.metrics import fnr_at_far
from trainer.runs import run_samples
from trainer.tensors import load_images, load_masks
from trainer.visualize import save_examples

MEMBER_OF_KIND = {FAMILIARITY_KIND: "patch_knn", LAMP_KIND: "lamp", SCORER_KIND: "two_head",
                  PATCH_HEAD_KIND: "patch_head"}
HYBRID_FORMAT = 2  # members by name + per-member fusion statistics
# format 3 (read, no longer written): + per-look statistics, the nearest look center picks one set
HYBRID_FORMAT_LOOKS = 4  # ... + per-look statistics weighted by the looks' posterior (fusion "looks")


def _train_good(split_doc: dict) -> set[str]:
    return {e["path"] for e in split_doc["train"] if e["label"] == 0}


def check_compatible(runs: dict[str, tuple[dict, dict]]) -> None:
    """``runs``: member name -> (split.json, checkpoint payload). All must agree."""
    problems = []
    (first, (split0, ckpt0)), rest = next(iter(runs.items())), list(runs.items())[1:]
    for name, (split, ckpt) in rest:
        pair = f"{first} and {name}"
        if split["data_fingerprint"] != split0["data_fingerprint"]:
            problems.append(f"{pair} were trained on different data sets (data fingerprints differ)")
        if split["seed"] != split0["seed"] or _train_good(split) != _train_good(split0):
            problems.append(f"the good training images of {pair} differ (train both with the same --seed)")
        if sorted(split["validation_good"]) != sorted(split0["validation_good"]):
            problems.append(f"the validation hold-outs of {pair} differ (use the same --seed and --val-fraction)")
        if ckpt["preprocess"] != ckpt0["preprocess"]:
            problems.append(f"the inputs of {pair} differ ({ckpt0['preprocess']} vs {ckpt['preprocess']}): "
                            f"train both with the same --size and --channels")
    if problems:
        raise ValueError("cannot fuse these runs: " + "; ".join(problems))


def read_member_runs(member_runs: dict[str, Path]) -> dict[str, tuple[dict, dict]]:
    """Member name -> (split.json, checkpoint payload), each run's kind checked against its role."""
    out = {}
    for name, run in member_runs.items():
        run = Path(run)
        split, ckpt = read_json(run / "split.json"), read_checkpoint(run / "checkpoint.pt")
        if MEMBER_OF_KIND.get(ckpt["kind"]) != name:
            want = next(k for k, v in MEMBER_OF_KIND.items() if v == name)
            raise ValueError(f"{run} is a {ckpt['kind']!r} run, but the {name} member needs a {want!r} run")
        out[name] = (split, ckpt)
    return out


def build_hybrid(member_runs: dict[str, Path], out_dir: Path, data_root: Path | None = None,
                 overwrite: bool = False, rule: str = "sum", looks: int | str = 1, log=None) -> dict:
    """Fuse member runs (name -> run dir: patch_knn, patch_head, lamp, two_head) into a hybrid run.
    ``looks``: one set of fusion constants (1), a number of looks, or "auto" (trainer/hybrid/looks.py)."""
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a run: choose another --out or pass --overwrite")
    runs = read_member_runs(member_runs)
    check_compatible(runs)
    # test on the split of the member that saw the most labelled defects: none of them is in it
    split_doc = max((s for s, _ in runs.values()), key=lambda s: s["k"])
    val, split, root = run_samples(split_doc, data_root)
    if not val:
        raise ValueError("the runs have no validation good images to fit the fusion on: retrain with --val-fraction > 0")
    preprocess = next(iter(runs.values()))[1]["preprocess"]
    size, channels = preprocess["size"], preprocess["channels"]
    members = {name: build_model(ckpt) for name, (_, ckpt) in runs.items()}
    fusion = fit_fusion(members, load_images(val, size, channels), rule, looks, seed=split_doc["seed"])
    if log is not None:
        log(describe_choice(fusion))
    hybrid = HybridDetector(members, fusion).eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    hybrid_format = HYBRID_FORMAT_LOOKS if "looks" in fusion else HYBRID_FORMAT
    write_payload(checkpoint, {"kind": HYBRID_KIND, "hybrid_format": hybrid_format, "preprocess": preprocess,
                               "data_fingerprint": split_doc["data_fingerprint"], "fusion": fusion,
                               "members": {name: ckpt for name, (_, ckpt) in runs.items()}})
    write_json(out_dir / "config.json", {
        "format_version": RUN_FORMAT_VERSION, "model": HYBRID_KIND, "fusion_rule": rule, "looks": looks,
        "members": {name: {"run": str(run), "checkpoint_sha256": sha256_file(Path(run) / "checkpoint.pt")}
                    for name, run in member_runs.items()}})
    write_json(out_dir / "split.json", split_doc)
    write_json(out_dir / "fusion.json", {"format_version": RUN_FORMAT_VERSION, **fusion})
    return evaluate_hybrid(hybrid, split, root, size, channels, out_dir, checkpoint, split_doc)


def evaluate_hybrid(hybrid: HybridDetector, split, root: Path, size: int, channels: int, out_dir: Path,
                    checkpoint: Path, split_doc: dict) -> dict:
    test = list(split.test)
    images = load_images(test, size, channels)
    labels = np.array([s.label for s in test])
    masks = load_masks(test, size, channels)
    scores, maps, members = [], [], []
    with torch.no_grad():
        for i in range(0, len(images), 16):
            out = hybrid(images[i:i + 16])
            scores.append(out.score.numpy())
            maps.append(out.anomaly_map[:, 0].numpy())
            members.append(out.member_scores.numpy())
    score, heatmap, member_scores = np.concatenate(scores), np.concatenate(maps), np.concatenate(members)
    metrics = {"format_version": RUN_FORMAT_VERSION, "model": HYBRID_KIND, "k": split.k,
               "fusion_rule": hybrid.rule, "test": evaluate_split(test, score, heatmap, masks),
               "members": {name: {**image_metrics(member_scores[:, j], labels),
                                  "fnr_at_far_0.05": fnr_at_far(member_scores[:, j], labels, 0.05)}
                           for j, name in enumerate(hybrid.names)},
               "checkpoint_sha256": sha256_file(checkpoint), "data_fingerprint": split_doc["data_fingerprint"]}
    metrics["test"]["fnr_at_far_0.05"] = fnr_at_far(score, labels, 0.05)
    write_json(out_dir / "metrics.json", metrics)
    save_examples(out_dir / "examples.png", images.numpy(), heatmap, score, labels)
    np.savez_compressed(out_dir / "test_scores.npz", labels=labels, scores=score,
                        paths=np.array([s.path.relative_to(root).as_posix() for s in test]),
                        member_names=np.array(hybrid.names), member_scores=member_scores)
    return metrics
