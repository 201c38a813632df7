"""The hybrid familiarity + novelty detector (Sivaprasad & Fritz, arXiv 2310.00797).

Familiarity: the two-head scorer (how much an image looks like the defects and
pseudo defects it was taught). Novelty: the LAMP autoencoder's residual (what
the model of good parts cannot explain in input space), which does not depend
on having seen a similar defect. The paper's own fusion and novelty source
(B-cos explanations) are not reproduced here; we fuse the two scores of this
project as follows, and say so.

Fusion, fitted on the validation good images that neither model trained on
(the same seeded hold-out in every trainer), using no defect label at all:

    z_fam = (s_fam - median_val(s_fam)) / (1.4826 * MAD_val(s_fam))
    z_nov = (s_nov - median_val(s_nov)) / (1.4826 * MAD_val(s_nov))
    score = z_fam + z_nov

i.e. each score is measured in robust standard deviations of good parts and
the two are added with equal weight. The heatmap is fused the same way, with
the median and MAD of all validation-good pixels of each map.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from trainer.artifacts import RUN_FORMAT_VERSION, read_json, sha256_file, write_json
from trainer.evaluate import evaluate_split, image_metrics, predict
from trainer.metrics import fnr_at_far
from trainer.tensors import load_images, load_masks
from trainer.visualize import save_examples

HYBRID_KIND = "hybrid"
MAD_TO_STD = 1.4826  # MAD of a normal distribution x 1.4826 = its standard deviation
FUSION_KEYS = ("familiarity", "novelty", "familiarity_map", "novelty_map")


class HybridOutput(NamedTuple):
    score: torch.Tensor        # (B,) fused score, in robust standard deviations of good parts
    anomaly_map: torch.Tensor  # (B, 1, H, W) fused pixel heatmap
    familiarity: torch.Tensor  # (B,) standardised two-head score
    novelty: torch.Tensor      # (B,) standardised LAMP score


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * MAD; the standard deviation if the MAD is 0 (constant data)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    center = float(np.median(v))
    scale = MAD_TO_STD * float(np.median(np.abs(v - center)))
    if scale <= 0:
        scale = float(v.std())
    if not scale > 0:
        raise ValueError("cannot fit the fusion: the validation scores are all equal")
    return center, scale


class HybridDetector(nn.Module):
    def __init__(self, novelty: nn.Module, familiarity: nn.Module, fusion: dict) -> None:
        super().__init__()
        self.novelty, self.familiarity = novelty, familiarity
        for key in FUSION_KEYS:
            self.register_buffer(f"{key}_center", torch.tensor(float(fusion[key]["center"])), persistent=False)
            self.register_buffer(f"{key}_scale", torch.tensor(float(fusion[key]["scale"])), persistent=False)

    def _z(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return (value - getattr(self, f"{key}_center")) / getattr(self, f"{key}_scale")

    def forward(self, images: torch.Tensor) -> HybridOutput:
        nov, fam = self.novelty(images), self.familiarity(images)
        z_fam, z_nov = self._z("familiarity", fam.score), self._z("novelty", nov.score)
        heatmap = self._z("familiarity_map", fam.anomaly_map) + self._z("novelty_map", nov.anomaly_map)
        return HybridOutput(score=z_fam + z_nov, anomaly_map=heatmap, familiarity=z_fam, novelty=z_nov)


def fit_fusion(novelty: nn.Module, familiarity: nn.Module, val_good: torch.Tensor) -> dict:
    s_nov, m_nov = predict(novelty, val_good)
    s_fam, m_fam = predict(familiarity, val_good)
    fusion = {}
    for key, values in zip(FUSION_KEYS, (s_fam, s_nov, m_fam, m_nov)):
        center, scale = robust_center_scale(values)
        fusion[key] = {"center": center, "scale": scale}
    fusion["n_validation_good"] = len(val_good)
    fusion["rule"] = "score = z(familiarity) + z(novelty); z = (x - median) / (1.4826 MAD) over validation good images"
    return fusion


def _train_good(split_doc: dict) -> set[str]:
    return {e["path"] for e in split_doc["train"] if e["label"] == 0}


def check_compatible(ae_split: dict, sc_split: dict, ae_ckpt: dict, sc_ckpt: dict) -> None:
    """The two runs must share data, good-image training set, hold-out and input format."""
    problems = []
    if ae_split["data_fingerprint"] != sc_split["data_fingerprint"]:
        problems.append("they were trained on different data sets (data fingerprints differ)")
    if ae_split["seed"] != sc_split["seed"] or _train_good(ae_split) != _train_good(sc_split):
        problems.append("their good training images differ (train both with the same --seed)")
    if sorted(ae_split["validation_good"]) != sorted(sc_split["validation_good"]):
        problems.append("their validation hold-outs differ (use the same --seed and --val-fraction)")
    if ae_ckpt["preprocess"] != sc_ckpt["preprocess"]:
        problems.append(f"their inputs differ ({ae_ckpt['preprocess']} vs {sc_ckpt['preprocess']}): "
                        f"train both with the same --size and --channels")
    if problems:
        raise ValueError("cannot fuse these runs: " + "; ".join(problems))


def build_hybrid(ae_run: Path, scorer_run: Path, out_dir: Path, data_root: Path | None = None,
                 overwrite: bool = False) -> dict:
    """Fuse a LAMP run and a two-head run (same data, seed, size) into one hybrid run directory."""
    from trainer.checkpoint import LAMP_KIND, SCORER_KIND, build_model, read_checkpoint
    from trainer.runs import run_samples

    ae_run, scorer_run, out_dir = Path(ae_run), Path(scorer_run), Path(out_dir)
    ae_split, sc_split = read_json(ae_run / "split.json"), read_json(scorer_run / "split.json")
    ae_ckpt, sc_ckpt = read_checkpoint(ae_run / "checkpoint.pt"), read_checkpoint(scorer_run / "checkpoint.pt")
    if ae_ckpt["kind"] != LAMP_KIND or sc_ckpt["kind"] != SCORER_KIND:
        raise ValueError(f"--ae needs a LAMP run and --scorer a two-head run; got kinds "
                         f"{ae_ckpt['kind']!r} and {sc_ckpt['kind']!r}")
    check_compatible(ae_split, sc_split, ae_ckpt, sc_ckpt)
    # test on the scorer's split: its k training defects are not in it
    val, split, root = run_samples(sc_split, data_root)
    if not val:
        raise ValueError("the runs have no validation good images to fit the fusion on: retrain with --val-fraction > 0")

    novelty, familiarity = build_model(ae_ckpt), build_model(sc_ckpt)
    size, channels = ae_ckpt["preprocess"]["size"], ae_ckpt["preprocess"]["channels"]
    fusion = fit_fusion(novelty, familiarity, load_images(val, size, channels))
    hybrid = HybridDetector(novelty, familiarity, fusion).eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a run: choose another --out or pass --overwrite")
    payload = {"format_version": 1, "kind": HYBRID_KIND, "preprocess": ae_ckpt["preprocess"],
               "data_fingerprint": sc_split["data_fingerprint"], "fusion": fusion,
               "members": {"novelty": ae_ckpt, "familiarity": sc_ckpt}}
    tmp = checkpoint.with_name("checkpoint.pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, checkpoint)
    write_json(out_dir / "config.json", {
        "format_version": RUN_FORMAT_VERSION, "model": HYBRID_KIND,
        "members": {"novelty": {"run": str(ae_run), "checkpoint_sha256": sha256_file(ae_run / "checkpoint.pt")},
                    "familiarity": {"run": str(scorer_run),
                                    "checkpoint_sha256": sha256_file(scorer_run / "checkpoint.pt")}}})
    write_json(out_dir / "split.json", sc_split)
    write_json(out_dir / "fusion.json", {"format_version": RUN_FORMAT_VERSION, **fusion})

    test = list(split.test)
    images = load_images(test, size, channels)
    labels = np.array([s.label for s in test])
    masks = load_masks(test, size, channels)
    with torch.no_grad():
        out = [hybrid(images[i:i + 32]) for i in range(0, len(images), 32)]
    parts = {name: torch.cat([getattr(o, name) for o in out]).numpy()
             for name in ("score", "familiarity", "novelty")}
    maps = torch.cat([o.anomaly_map for o in out])[:, 0].numpy()
    metrics = {"format_version": RUN_FORMAT_VERSION, "model": HYBRID_KIND, "k": split.k,
               "test": evaluate_split(test, parts["score"], maps, masks),
               "components": {name: {**image_metrics(parts[name], labels),
                                     "fnr_at_far_0.05": fnr_at_far(parts[name], labels, 0.05)}
                              for name in ("familiarity", "novelty")},
               "checkpoint_sha256": sha256_file(checkpoint), "data_fingerprint": sc_split["data_fingerprint"]}
    metrics["test"]["fnr_at_far_0.05"] = fnr_at_far(parts["score"], labels, 0.05)
    write_json(out_dir / "metrics.json", metrics)
    save_examples(out_dir / "examples.png", images.numpy(), maps, parts["score"], labels)
    np.savez_compressed(out_dir / "test_scores.npz", labels=labels, paths=np.array(
        [s.path.relative_to(root).as_posix() for s in test]), **{f"scores_{k}": v for k, v in parts.items()},
        scores=parts["score"])
    return metrics


def build_from_checkpoint(payload: dict) -> HybridDetector:
    """Rebuild a hybrid from its checkpoint (registered in trainer.checkpoint.BUILDERS)."""
    from trainer.checkpoint import build_model
    members = {name: build_model(m) for name, m in payload["members"].items()}
    return HybridDetector(members["novelty"], members["familiarity"], payload["fusion"])


__all__ = ["HybridDetector", "HybridOutput", "build_hybrid", "fit_fusion", "robust_center_scale"]
