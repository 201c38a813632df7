"""Per-look fusion constants: each part is standardised against good parts that look like it.

A line that makes several variants of a part (ELPV: mono- and poly-crystalline cells) has good parts
whose member scores sit at different levels: good poly cells carry grain texture that the
familiarity member finds less familiar than a good mono cell, and the patch head scores good mono
cells higher. One median and MAD per member, fitted on all validation good parts, then measure a
mono cell against a mixture, and one threshold is too low for one variant and too high for the
other. Per-look constants fix the reference instead of the model:

1. **Look descriptor** of an image: the spatial mean of each frozen stage map of the hybrid's shared
   feature extractor (the patch features' global average; computed anyway, so free at the edge),
   standardised per channel over the validation good images.
2. **Looks**: k-means (best of 10 seeded restarts) of the validation good images' descriptors.
3. **Constants**: per look and per member, the median and 1.4826 MAD of the member's image scores
   and map pixels over that look's validation good images (the same estimate as the global fusion).
4. At inference an image's z-scores are the average of its z-scores under each look's constants, weighted
   by how likely the image is to be of that look: the posterior of a mixture of the looks as Gaussians of
   one shared variance per descriptor dimension, s2 = the validation good images' mean squared distance to
   their look center per dimension ("posterior_variance"),

       w_c = softmax_c( -|d - center_c|^2 / (2 s2) ),    z_i = sum_c w_c (s_i - median_c(s_i)) / (1.4826 MAD_c(s_i))

   (in the exported graph: a MatMul, a Softmax and a MatMul with the constants). A part plainly of one look
   takes that look's constants, as a nearest-center rule would; a part between two looks gets a blend
   instead of a jump. With the nearest center alone, 3 % of ELPV's test cells lay within 2 % of the
   boundary, where the choice moved the fused score by 6-9 robust SDs (median), and a small perturbation
   (an FP16 engine's rounding) flipped one of the demo cells to the other look and its score by 1.9
   (docs/benchmarks.md, detection_reading, session 18). Image AUROC is the same either way (3 seeds).
   Fusions from before (hybrid format 3, no "posterior_variance") keep the nearest center.

``--looks auto`` (edge-train hybrid's default) takes the number of looks from the validation good
images themselves: for 2, 3 and 4 clusters it runs the k-means, drops a clustering with a look of
fewer than ``MIN_LOOK_IMAGES`` images or 10 % of them (too few for a median and MAD that the threshold
can rest on), and keeps the one with the highest mean silhouette if that is at least
``AUTO_SILHOUETTE``; otherwise one look (the global constants, exactly the fusion without looks).
Measured (docs/benchmarks.md, detection_reading, 2026-12-05 session 16): ELPV's validation good cells
have a silhouette of 0.29-0.30 at 2 looks (mono / poly), KolektorSDD's thirds 0.10-0.12 (one look).

No label is read: the looks and their constants come from validation good images only.
"""
from __future__ import annotations

import numpy as np
import torch

from trainer.clustering import best_kmeans, silhouette
from trainer.robust import robust_center_scale

MIN_LOOK_IMAGES = 30      # validation good images a look needs for its own median and MAD
MIN_LOOK_SHARE = 0.10     # ... and at least this share of them (auto only)
AUTO_SILHOUETTE = 0.2     # mean silhouette above which auto takes the looks as real groups
AUTO_CANDIDATES = (2, 3, 4)


def member_constants(scores: np.ndarray, maps: np.ndarray) -> dict:
    """A member's fusion constants from its outputs on good images: median and 1.4826 MAD of its image
    scores and of all its map pixels (the one-set fusion and each look use the same estimate)."""
    return {part: dict(zip(("center", "scale"), robust_center_scale(v))) for part, v in (("score", scores),
                                                                                          ("map", maps))}


def standardise_descriptors(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and SD (floored) of the validation good descriptors (N, D)."""
    mean = descriptors.mean(0)
    sd = np.maximum(descriptors.std(0), 1e-6)
    return mean, sd


def _cluster(x: torch.Tensor, count: int, seed: int):
    """(best k-means of ``count`` clusters, the size of each of the ``count`` looks; 0 for one that came out
    empty, so that a size check refuses it)."""
    fit = best_kmeans(x, count, seed)
    sizes = np.bincount(fit.assign.numpy(), minlength=count).tolist()
    return fit, sizes


def choose_looks(descriptors: np.ndarray, looks: int | str, seed: int = 0) -> tuple[int, np.ndarray, np.ndarray, dict]:
    """(count, centers (C, D) in the standardised space, assignment (N,), report) for ``looks``, a number
    or "auto". ``descriptors`` are already standardised. One look: centers (1, D) of zeros."""
    n = len(descriptors)
    x = torch.from_numpy(np.asarray(descriptors, dtype=np.float64))
    one = (1, np.zeros((1, x.shape[1])), np.zeros(n, dtype=np.int64))
    if looks == "auto":
        report = {"asked": "auto", "silhouette": {}, "refused": {}}
        best = None
        for c in AUTO_CANDIDATES:
            if n < c * MIN_LOOK_IMAGES:
                report["refused"][c] = f"{n} validation good images are too few for {c} looks of {MIN_LOOK_IMAGES}"
                continue
            fit, sizes = _cluster(x, c, seed)
            if min(sizes) < max(MIN_LOOK_IMAGES, MIN_LOOK_SHARE * n):
                report["refused"][c] = f"a look of {min(sizes)} images (sizes {sizes})"
                continue
            s = silhouette(x, fit.assign)
            report["silhouette"][c] = round(s, 4)
            if best is None or s > best[0]:
                best = (s, fit)
        if best is None or best[0] < AUTO_SILHOUETTE:
            report["chosen"] = 1
            report["why"] = (f"no clustering of the validation good images has a silhouette >= {AUTO_SILHOUETTE} "
                             f"with every look of >= {MIN_LOOK_IMAGES} images: one look")
            return (*one, report)
        s, fit = best
        report["chosen"] = len(fit.centers)
        report["why"] = f"highest silhouette {s:.3f} >= {AUTO_SILHOUETTE}"
        return len(fit.centers), fit.centers.numpy(), fit.assign.numpy(), report
    looks = int(looks)
    if looks < 1:
        raise ValueError(f"looks must be 'auto' or >= 1, got {looks}")
    if looks == 1:
        return (*one, {"asked": 1, "chosen": 1})
    if n < looks * MIN_LOOK_IMAGES:
        raise ValueError(f"{looks} looks need at least {looks * MIN_LOOK_IMAGES} validation good images "
                         f"({MIN_LOOK_IMAGES} each), the run has {n}: ask for fewer looks (--looks)")
    fit, sizes = _cluster(x, looks, seed)
    if min(sizes) < MIN_LOOK_IMAGES:
        raise ValueError(f"{looks} looks of the validation good images leave a look of {min(sizes)} images "
                         f"(sizes {sizes}; each needs >= {MIN_LOOK_IMAGES} for its median and MAD): "
                         f"ask for fewer looks (--looks), or 'auto'")
    report = {"asked": looks, "chosen": looks, "silhouette": {looks: round(silhouette(x, fit.assign), 4)}}
    return looks, fit.centers.numpy(), fit.assign.numpy(), report


def fit_looks(descriptors: np.ndarray, outputs: dict[str, tuple[np.ndarray, np.ndarray]], looks: int | str,
              seed: int = 0) -> tuple[dict | None, dict]:
    """(the fusion document's "looks" entry, or None for one look; how the count was chosen).
    ``descriptors``: raw look descriptors (N, D) of the validation good images; ``outputs``: member ->
    (image scores (N,), maps (N, H, W)) on the same images."""
    mean, sd = standardise_descriptors(descriptors)
    x = (descriptors - mean) / sd
    count, centers, assign, report = choose_looks(x, looks, seed)
    if count == 1:
        return None, report
    # the mixture's shared variance per dimension: mean squared distance of a validation image to its center
    posterior_variance = float(((x - centers[assign]) ** 2).sum(1).mean() / x.shape[1])
    per_look = []
    for c in range(count):
        sel = assign == c
        per_look.append({name: member_constants(scores[sel], maps[sel]) for name, (scores, maps) in outputs.items()})
    return {"count": count, "descriptor_mean": mean.tolist(), "descriptor_sd": sd.tolist(),
            "centers": centers.tolist(), "members": per_look, "posterior_variance": posterior_variance,
            "n_validation_good": np.bincount(assign, minlength=count).tolist(),
            "rule": "w_c = softmax_c(-|(d - mean) / sd - center_c|^2 / (2 posterior_variance)), d = spatial means of "
                    "the shared frozen stage maps; z_i = sum_c w_c (s_i - median_c(s_i)) / (1.4826 MAD_c(s_i)) over "
                    "look c's validation good images"}, report
