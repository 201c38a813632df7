"""Fit a run's alert thresholds on held-out data and write calibration.json.

What is fitted, per camera (``"*"`` = every camera without its own entry):
* the image alert threshold for a target false-alarm rate, from held-out good
  images only, with the guarantee of calibration/thresholds.py;
* the score normalisation raw -> [0, 1] (edge/verdict.py), centred on that
  threshold with the robust spread of the good scores as its scale;
* the pixel threshold that turns a heatmap into defect regions: the same rule
  applied to each good image's heatmap maximum, so that a good part shows a
  region with at most the pixel target rate (same guarantee);
* where held-out defective images exist, the miss rate at the threshold (an
  estimate with an exact upper bound; nothing is fitted on them).

Held-out means never trained on: the run's validation good images (held out
by every trainer), plus any images given with --data that the run did not
train on (checked). The format is documented in docs/calibration.md.
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calibration.thresholds import fit_threshold, miss_rate
from edge.regions import find_regions
from trainer.artifacts import read_json, write_json
from trainer.data import Sample, Split
from trainer.evaluate import predict
from trainer.runs import open_run, run_samples
from trainer.tensors import load_images

CALIBRATION_FORMAT_VERSION = 1
CALIBRATION_KIND = "edge-inspect/calibration"
DEFAULT_CAMERA = "*"


def trained_paths(split: Split, validation_good: Sequence[Sample]) -> set[Path]:
    """Images the model learned from: the split's training part less the validation hold-out."""
    return {s.path.resolve() for s in split.train} - {s.path.resolve() for s in validation_good}


def check_not_trained_on(samples: Sequence[Sample], trained: set[Path]) -> None:
    seen = [s.path for s in samples if s.path.resolve() in trained]
    if seen:
        raise ValueError(f"{len(seen)} calibration image(s) were used to train the model, e.g. {seen[0]}: "
                         f"calibrate on held-out images only")


def robust_scale(scores: np.ndarray) -> float:
    s = np.asarray(scores, dtype=np.float64)
    scale = 1.4826 * float(np.median(np.abs(s - np.median(s))))
    return scale if scale > 0 else (float(s.std()) or 1.0)


def fit_camera(model, size: int, channels: int, good: Sequence[Sample], defective: Sequence[Sample],
               target_far: float, confidence: float, guarantee: str, pixel_far: float,
               min_region_area: int) -> tuple[dict, dict]:
    """The calibration entry of one camera, and the arrays the report plots."""
    good_images = load_images(good, size, channels)
    good_scores, good_maps = predict(model, good_images)
    image_fit = fit_threshold(good_scores, target_far, confidence, guarantee)
    pixel_fit = fit_threshold(good_maps.reshape(len(good_maps), -1).max(axis=1), pixel_far, confidence, guarantee)
    entry = {
        "image": image_fit.to_dict(),
        "normalisation": {"kind": "logistic", "center": image_fit.threshold, "scale": robust_scale(good_scores),
                          "rule": "n = 1 / (1 + exp(-(raw - center) / scale)); alert when n > 0.5 (raw > threshold)"},
        "pixel": {**pixel_fit.to_dict(), "min_region_area": min_region_area, "map_size": [size, size],
                  "rule": "regions = 8-connected heatmap pixels above threshold with at least min_region_area pixels"},
        "held_out": {"n_good": len(good), "n_defective": len(defective)},
    }
    arrays = {"good_images": good_images.numpy(), "good_scores": good_scores, "good_maps": good_maps}
    if defective:
        d_images = load_images(defective, size, channels)
        d_scores, d_maps = predict(model, d_images)
        entry["miss_rate"] = miss_rate(d_scores, image_fit.threshold)
        entry["miss_rate"]["note"] = "held-out defective images; an estimate, nothing was fitted on them"
        arrays.update(defect_images=d_images.numpy(), defect_scores=d_scores, defect_maps=d_maps)
    else:
        entry["miss_rate"] = None
        entry["miss_rate_note"] = "no held-out defective images: the miss rate cannot be estimated"
    return entry, arrays


def write_report(out_dir: Path, camera: str, entry: dict, arrays: dict) -> list[str]:
    """PNG plots beside calibration.json; returns their file names."""
    from calibration.plots import plot_heatmap_overlays, plot_roc, plot_score_histograms
    tag = "all" if camera == DEFAULT_CAMERA else camera
    t = entry["image"]["threshold"]
    d_scores = arrays.get("defect_scores", np.empty(0))
    files = [f"scores_{tag}.png"]
    plot_score_histograms(out_dir / files[0], arrays["good_scores"], d_scores, t,
                          f"camera {camera}: held-out scores, target FAR {entry['image']['target_far']:g}")
    if len(d_scores):
        files.append(f"roc_{tag}.png")
        plot_roc(out_dir / files[-1], arrays["good_scores"], d_scores, t, f"camera {camera}: ROC, operating point")
    images = np.concatenate([arrays["good_images"], arrays.get("defect_images", arrays["good_images"][:0])])
    maps = np.concatenate([arrays["good_maps"], arrays.get("defect_maps", arrays["good_maps"][:0])])
    scores = np.concatenate([arrays["good_scores"], d_scores])
    labels = np.r_[np.zeros(len(arrays["good_scores"]), int), np.ones(len(d_scores), int)]
    px = entry["pixel"]
    regions = [find_regions(m, px["threshold"], px["min_region_area"]) for m in maps]
    files.append(f"heatmaps_{tag}.png")
    plot_heatmap_overlays(out_dir / files[-1], images, maps, scores, labels, t, px["threshold"], regions)
    return files


def calibrate(run_dir: Path, target_far: float, *, confidence: float = 0.95, guarantee: str = "pac",
              pixel_far: float | None = None, min_region_area: int | None = None,
              good: Sequence[Sample] | None = None, defective: Sequence[Sample] | None = None,
              camera: str = DEFAULT_CAMERA, out: Path | None = None, plots: bool = True,
              data_root: Path | None = None, extra: Sequence[Sample] = ()) -> dict:
    """Calibrate one camera of a run and write (or update) calibration.json. ``good`` and
    ``defective`` default to the run's validation good images and its test-split defects.
    ``extra`` (e.g. ``--data``): more held-out images; its good ones join ``good``, its
    defective ones replace the default defects; any the run trained on are left out and counted."""
    run = open_run(run_dir)
    size, channels = run["meta"]["preprocess"]["size"], run["meta"]["preprocess"]["channels"]
    val_good, split, root = run_samples(run["split_doc"], data_root)
    trained = trained_paths(split, val_good)
    good = list(val_good if good is None else good)
    fresh = [s for s in extra if s.path.resolve() not in trained]
    known = {s.path.resolve() for s in good}
    good += [s for s in fresh if s.label == 0 and s.path.resolve() not in known]
    defective = [s for s in fresh if s.label == 1] or defective
    defective = list([s for s in split.test if s.label == 1] if defective is None else defective)
    check_not_trained_on([*good, *defective], trained)
    if any(s.label != 0 for s in good) or any(s.label != 1 for s in defective):
        raise ValueError("calibration good images must be labelled good and defective images defective")
    min_area = min_region_area if min_region_area is not None else max(4, round(5e-4 * size * size))
    entry, arrays = fit_camera(run["model"], size, channels, good, defective, target_far, confidence, guarantee,
                               pixel_far or target_far, min_area)
    entry["held_out"]["extra_left_out_trained"] = len(extra) - len(fresh)
    entry["fitted_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = Path(out or Path(run_dir) / "calibration.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if plots:
        entry["plots"] = write_report(out.parent, camera, entry, arrays)
    doc = read_json(out) if out.is_file() else None
    if doc is not None and doc.get("model", {}).get("checkpoint_sha256") != run["checkpoint_sha256"]:
        raise ValueError(f"{out} was fitted for another model (checkpoint hash differs): write to a new --out")
    doc = doc or {"format_version": CALIBRATION_FORMAT_VERSION, "kind": CALIBRATION_KIND,
                  "model": {"run": str(Path(run_dir).resolve()), "kind": run["meta"]["kind"],
                            "checkpoint_sha256": run["checkpoint_sha256"],
                            "preprocess": run["meta"]["preprocess"]},
                  "data_fingerprint": run["split_doc"]["data_fingerprint"], "cameras": {}}
    doc["cameras"][camera] = entry
    write_json(out, doc)
    return doc


def report_lines(doc: dict, camera: str = DEFAULT_CAMERA) -> list[str]:
    e = doc["cameras"][camera]
    im, px = e["image"], e["pixel"]
    lines = [f"camera {camera}: alert threshold {im['threshold']:.6g} (raw score)",
             f"  {im['statement']}",
             f"  held-out good images: {im['n_good']}, flagged among them: {im['empirical_far']:.2%}",
             f"  pixel threshold {px['threshold']:.6g} (a good part shows a region with rate <= {px['target_far']:g}), "
             f"min region {px['min_region_area']} px"]
    if e["miss_rate"]:
        m = e["miss_rate"]
        lines.append(f"  expected miss rate {m['estimate']:.2%} ({m['missed']}/{m['n_defective']} held-out defective "
                     f"images; 95% upper bound {m['upper_95']:.2%})")
    else:
        lines.append(f"  {e['miss_rate_note']}")
    if e.get("plots"):
        lines.append(f"  plots: {', '.join(e['plots'])}")
    return lines
