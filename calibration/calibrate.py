"""Fit alert thresholds on the scores of the engine that ships, and write calibration.json.

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

Fitted on what: always on the scores of an engine, computed by the edge's own backend
(calibration/engine_scores.py), never on the torch checkpoint's. The walk is one way:
images + engine in, calibration.json out.
* ``calibrate_engine`` (``edge-calibrate --engine``): any engine the edge runs, folders of
  good (and defective) images; no torch, runs on the line machine.
* ``calibrate`` (``edge-calibrate --run``): at training time; picks the run's held-out
  images (validation good images, test-split defects, ``--data`` images it did not train
  on) from its split.json and calibrates on the run's exported graph (``engine``). Neither
  opens a checkpoint or imports torch; the CLI exports the graph first where ``--engine``
  is not given (the one step back into the trainer, and it is deploy's: edge-export).
Each camera entry records the engine it was fitted on (file, sha256, precision): edge-run
refuses a calibration fitted on another engine. The format: docs/calibration.md.
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calibration.engine_scores import EngineScorer, EngineScores
from calibration.images import model_pixels
from calibration.thresholds import fit_threshold, miss_rate
from edge.regions import find_regions
from edge.rules import DEFAULT_CAMERA, check_calibration
from trainer.artifacts import read_json, write_json
from trainer.data import Sample
from trainer.robust import robust_center_scale

CALIBRATION_FORMAT_VERSION = 1
CALIBRATION_KIND = "edge-inspect/calibration"


def trained_paths(split, validation_good: Sequence[Sample]) -> set[Path]:
    """Images the model learned from: the split's training part less the validation hold-out."""
    return {s.path.resolve() for s in split.train} - {s.path.resolve() for s in validation_good}


def check_not_trained_on(samples: Sequence[Sample], trained: set[Path]) -> None:
    seen = [s.path for s in samples if s.path.resolve() in trained]
    if seen:
        raise ValueError(f"{len(seen)} calibration image(s) were used to train the model, e.g. {seen[0]}: "
                         f"calibrate on held-out images only")


def fit_entry(good: EngineScores, defective: EngineScores | None, target_far: float, confidence: float,
              guarantee: str, pixel_far: float, min_region_area: int, map_size: int) -> dict:
    """The calibration entry of one camera from the engine's scores of its held-out images."""
    image_fit = fit_threshold(good.scores, target_far, confidence, guarantee)
    pixel_fit = fit_threshold(good.maps.reshape(len(good.maps), -1).max(axis=1), pixel_far, confidence, guarantee)
    entry = {
        "image": image_fit.to_dict(),
        "normalisation": {"kind": "logistic", "center": image_fit.threshold,
                          "scale": robust_center_scale(good.scores)[1],
                          "rule": "n = 1 / (1 + exp(-(raw - center) / scale)); alert when n > 0.5 (raw > threshold)"},
        "pixel": {**pixel_fit.to_dict(), "min_region_area": min_region_area, "map_size": [map_size, map_size],
                  "rule": "regions = 8-connected heatmap pixels above threshold with at least min_region_area pixels"},
        "held_out": {"n_good": len(good.scores), "n_defective": 0 if defective is None else len(defective.scores)},
    }
    if defective is not None and len(defective.scores):
        entry["miss_rate"] = miss_rate(defective.scores, image_fit.threshold)
        entry["miss_rate"]["note"] = "held-out defective images; an estimate, nothing was fitted on them"
    else:
        entry["miss_rate"] = None
        entry["miss_rate_note"] = "no held-out defective images: the miss rate cannot be estimated"
    return entry


def write_report(out_dir: Path, camera: str, entry: dict, good_pixels: np.ndarray, good: EngineScores,
                 defect_pixels: np.ndarray | None, defective: EngineScores | None) -> list[str]:
    """PNG plots beside calibration.json; returns their file names."""
    from calibration.plots import plot_heatmap_overlays, plot_roc, plot_score_histograms
    tag = "all" if camera == DEFAULT_CAMERA else camera
    t = entry["image"]["threshold"]
    d_scores = defective.scores if defective is not None else np.empty(0)
    files = [f"scores_{tag}.png"]
    plot_score_histograms(out_dir / files[0], good.scores, d_scores, t,
                          f"camera {camera}: held-out scores, target FAR {entry['image']['target_far']:g}")
    if len(d_scores):
        files.append(f"roc_{tag}.png")
        plot_roc(out_dir / files[-1], good.scores, d_scores, t, f"camera {camera}: ROC, operating point")
    images = good_pixels if defect_pixels is None else np.concatenate([good_pixels, defect_pixels])
    maps = good.maps if defective is None else np.concatenate([good.maps, defective.maps])
    scores = np.concatenate([good.scores, d_scores])
    labels = np.r_[np.zeros(len(good.scores), int), np.ones(len(d_scores), int)]
    px = entry["pixel"]
    regions = [find_regions(m, px["threshold"], px["min_region_area"]) for m in maps]
    files.append(f"heatmaps_{tag}.png")
    plot_heatmap_overlays(out_dir / files[-1], images.astype(np.float32) / 255, maps, scores, labels, t,
                          px["threshold"], regions)
    return files


def model_section(manifest: dict) -> dict:
    """What calibration.json says of the model: the checkpoint behind the engine and its input."""
    return {"kind": manifest.get("model_kind"), "checkpoint_sha256": manifest["checkpoint_sha256"],
            "model_version": manifest.get("model_version"), "preprocess": manifest["input"].get("preprocess")}


def fit_camera(scorer: EngineScorer, good: Sequence[Sample], defective: Sequence[Sample], target_far: float,
               confidence: float, guarantee: str, pixel_far: float | None, min_region_area: int | None,
               report_dir: Path | None, camera: str) -> dict:
    """Score ``good`` and ``defective`` with the engine and fit the camera's entry (plots when report_dir)."""
    if any(s.label != 0 for s in good) or any(s.label != 1 for s in defective):
        raise ValueError("calibration good images must be labelled good and defective images defective")
    size, channels = scorer.size, scorer.channels
    good_px = model_pixels(good, size, channels)
    good_scores = scorer.score(good_px)
    d_px = model_pixels(defective, size, channels) if defective else None
    d_scores = scorer.score(d_px) if defective else None
    min_area = min_region_area if min_region_area is not None else max(4, round(5e-4 * size * size))
    entry = fit_entry(good_scores, d_scores, target_far, confidence, guarantee, pixel_far or target_far,
                      min_area, size)
    entry["engine"] = scorer.record()
    entry["fitted_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if report_dir is not None:
        try:
            entry["plots"] = write_report(report_dir, camera, entry, good_px, good_scores, d_px, d_scores)
        except ImportError as e:   # the line machine may have no matplotlib: the thresholds matter, not the PNGs
            entry["plots_note"] = f"plots skipped: {e}"
    return entry


def write_calibration(out: Path, camera: str, entry: dict, model: dict, extra: dict | None = None) -> dict:
    """Add (or replace) ``camera``'s entry in calibration.json at ``out``; a file fitted for another
    checkpoint is refused. Every entry is checked as the edge will check it before the file is written."""
    doc = read_json(out) if out.is_file() else None
    if doc is not None and doc.get("model", {}).get("checkpoint_sha256") != model["checkpoint_sha256"]:
        raise ValueError(f"{out} was fitted for another model (checkpoint hash differs): write to a new --out")
    doc = doc or {"format_version": CALIBRATION_FORMAT_VERSION, "kind": CALIBRATION_KIND, "model": model,
                  **(extra or {}), "cameras": {}}
    doc["cameras"][camera] = entry
    check_calibration(doc, str(out))
    write_json(out, doc)
    return doc


def calibrate_engine(engine: Path, good: Sequence[Sample], target_far: float, *, defective: Sequence[Sample] = (),
                     confidence: float = 0.95, guarantee: str = "pac", pixel_far: float | None = None,
                     min_region_area: int | None = None, camera: str = DEFAULT_CAMERA, out: Path | None = None,
                     plots: bool = True, update: Path | None = None) -> dict:
    """Calibrate one camera on ``engine``'s scores of ``good`` (and ``defective``) images; write
    ``out`` (default: calibration.json beside the engine), or with ``update`` (the engine's
    manifest) replace the camera's entry there (calibration/manifest_update.py; ``out`` is then
    written only when given). Returns the calibration document. The caller vouches that the
    images are held out (the engine does not know what it was trained on)."""
    scorer = EngineScorer(engine)
    report_dir = Path(out).parent if out else Path(engine).parent
    entry = fit_camera(scorer, list(good), list(defective), target_far, confidence, guarantee, pixel_far,
                       min_region_area, report_dir if plots else None, camera)
    model = model_section(scorer.manifest)
    doc = None
    if update is not None:
        from calibration.manifest_update import update_manifest
        doc = update_manifest(engine, camera, entry, model, update)["calibration"]
    if out is not None or update is None:
        out = Path(out or Path(engine).with_name("calibration.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = write_calibration(out, camera, entry, model)
    return doc


def calibrate(run_dir: Path, target_far: float, *, confidence: float = 0.95, guarantee: str = "pac",
              pixel_far: float | None = None, min_region_area: int | None = None,
              good: Sequence[Sample] | None = None, defective: Sequence[Sample] | None = None,
              camera: str = DEFAULT_CAMERA, out: Path | None = None, plots: bool = True,
              data_root: Path | None = None, extra: Sequence[Sample] = (), engine: Path) -> dict:
    """Calibrate one camera of a run on ``engine`` (the run's exported graph, or an engine built from
    it) and write (or update) calibration.json. The run gives only its split (which images are held
    out): its checkpoint is not opened, torch is not imported. ``good`` and ``defective`` default to
    the run's validation good images and its test-split defects. ``extra`` (e.g. ``--data``): more
    held-out images; its good ones join ``good``, its defective ones replace the default defects; any
    the run trained on are left out and counted. (``edge-calibrate --run`` without ``--engine``
    exports the graph first: calibration/cli.py.)"""
    from trainer.runs import run_split   # reads split.json and the data only: no checkpoint, no torch
    split_doc, val_good, split = run_split(run_dir, data_root)
    trained = trained_paths(split, val_good)
    good = list(val_good if good is None else good)
    fresh = [s for s in extra if s.path.resolve() not in trained]
    known = {s.path.resolve() for s in good}
    good += [s for s in fresh if s.label == 0 and s.path.resolve() not in known]
    defective = [s for s in fresh if s.label == 1] or defective
    defective = list([s for s in split.test if s.label == 1] if defective is None else defective)
    check_not_trained_on([*good, *defective], trained)
    out = Path(out or Path(run_dir) / "calibration.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    scorer = EngineScorer(engine)
    checkpoint = read_json(Path(run_dir) / "metrics.json").get("checkpoint_sha256")
    if checkpoint and scorer.manifest["checkpoint_sha256"] != checkpoint:
        raise ValueError(f"{scorer.engine} was exported from another checkpoint than {run_dir}'s")
    entry = fit_camera(scorer, good, defective, target_far, confidence, guarantee, pixel_far, min_region_area,
                       out.parent if plots else None, camera)
    entry["held_out"]["extra_left_out_trained"] = len(extra) - len(fresh)
    model = {**model_section(scorer.manifest), "run": str(Path(run_dir).resolve())}
    return write_calibration(out, camera, entry, model, {"data_fingerprint": split_doc["data_fingerprint"]})


def report_lines(doc: dict, camera: str = DEFAULT_CAMERA) -> list[str]:
    e = doc["cameras"][camera]
    im, px = e["image"], e["pixel"]
    eng = e.get("engine") or {}
    lines = [f"camera {camera}: alert threshold {im['threshold']:.6g} (raw score of {eng.get('file', '?')}, "
             f"{eng.get('precision', '?')})",
             f"  {im['statement']}"]
    if "sample_size_note" in im:
        lines.append(f"  {im['sample_size_note']}")
    # the trade-off side by side: what the threshold promises on good parts, what it costs on defects
    far = f"false alarms <= {im['target_far']:.2%} guaranteed ({im['empirical_far']:.2%} of {im['n_good']} held-out good)"
    if e["miss_rate"]:
        m = e["miss_rate"]
        lines.append(f"  {far}; misses {m['estimate']:.2%} ({m['missed']}/{m['n_defective']} held-out defective, "
                     f"95% upper bound {m['upper_95']:.2%})")
    else:
        lines.append(f"  {far}; {e['miss_rate_note']}")
    lines.append(f"  pixel threshold {px['threshold']:.6g} (a good part shows a region with rate <= "
                 f"{px['target_far']:g}), min region {px['min_region_area']} px")
    if e.get("plots"):
        lines.append(f"  plots: {', '.join(e['plots'])}")
    return lines
