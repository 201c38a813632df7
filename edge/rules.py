"""Which calibrated constants judge which camera, and the checks that keep them sane.

A camera is judged by its own calibration entry, else by the ``"*"`` entry, else not at
all: ``edge-run`` refuses to start and names the camera. It is never judged with another
camera's threshold (a camera whose lighting differs has a different score distribution;
borrowing a neighbour's threshold silently breaks the false-alarm promise).

Every threshold that enters the edge must be a finite number: a NaN threshold makes
``score > threshold`` false for every score, so every part would pass as OK. The checks
here are shared by every entry point: the manifest loader, ``--threshold``, the alert
stage, and calibration's own output (calibration/ calls ``check_calibration`` before it
writes). numpy-free: runs on the line.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_CAMERA = "*"


class RulesError(ValueError):
    """A calibration or threshold the edge must not judge with, in one line that says what to do."""


def finite_number(value, what: str) -> float:
    """``value`` as a float, or RulesError when it is missing, not a number, NaN or infinite."""
    if value is None:
        raise RulesError(f"{what} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RulesError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise RulesError(f"{what} is {value}: thresholds must be finite numbers (a NaN threshold "
                         f"passes every part as OK)")
    return float(value)


def parse_threshold(text: str) -> float:
    """``--threshold``'s argparse type: a finite float, else a usage error that says why."""
    try:
        return finite_number(float(text), "the threshold")
    except ValueError as e:   # float('x') or RulesError: argparse prints only an ArgumentTypeError's text
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, RulesError) else f"{text!r} is not a number") \
            from None


@dataclass(frozen=True)
class CameraRules:
    """A camera's calibrated constants: alert threshold, normalisation, pixel (region) threshold."""
    threshold: float
    center: float
    scale: float
    pixel_threshold: float | None
    min_region_area: int


def check_entry(entry, camera: str, where: str) -> CameraRules:
    """One camera entry of a calibration document -> its rules, or RulesError naming what is wrong."""
    name = f"{where}: calibration of camera {camera!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), dict):
        raise RulesError(f"{name} has no 'image' section with a threshold: calibrate it again "
                         f"(edge-calibrate --engine ... --camera {camera})")
    threshold = finite_number(entry["image"].get("threshold"), f"{name}: image threshold")
    norm = entry.get("normalisation") or {}
    center = finite_number(norm.get("center", threshold), f"{name}: normalisation center")
    scale = finite_number(norm.get("scale", 1.0), f"{name}: normalisation scale")
    if scale <= 0:
        raise RulesError(f"{name}: normalisation scale must be > 0, got {scale}")
    pixel = entry.get("pixel") or {}
    pixel_threshold = pixel.get("threshold")
    if pixel_threshold is not None:
        pixel_threshold = finite_number(pixel_threshold, f"{name}: pixel threshold")
    return CameraRules(threshold, center, scale, pixel_threshold, int(pixel.get("min_region_area", 1)))


def check_calibration(calibration, where: str) -> dict[str, CameraRules]:
    """Every camera entry of a calibration document checked; {} for no calibration (None)."""
    if calibration is None:
        return {}
    cameras = calibration.get("cameras") if isinstance(calibration, dict) else None
    if not isinstance(cameras, dict) or not cameras:
        raise RulesError(f"{where}: the calibration has no camera entries: calibrate the model again")
    return {camera: check_entry(entry, camera, where) for camera, entry in cameras.items()}


def camera_rules(manifest: dict, threshold_override: float | None) -> dict[str, CameraRules]:
    """The rules of every calibrated camera (``"*"`` included). ``--threshold`` replaces every
    threshold (normalisation then centres on it) and, as a rule for all, also covers cameras
    without an entry of their own."""
    where = f"manifest of {manifest.get('engine', {}).get('file', 'the engine')}"
    rules = check_calibration(manifest.get("calibration"), where)
    if threshold_override is None:
        if not rules:
            raise RulesError("the model has no calibration: calibrate it (edge-calibrate --engine MODEL --good DIR "
                             "--update MODEL.manifest.json) or give --threshold explicitly")
        return rules
    t = finite_number(threshold_override, "--threshold")
    out = {cam: CameraRules(t, t, r.scale, r.pixel_threshold, r.min_region_area) for cam, r in rules.items()}
    out.setdefault(DEFAULT_CAMERA, CameraRules(t, t, 1.0, None, 1))
    return out


def rules_for(rules: dict[str, CameraRules], camera: str) -> CameraRules:
    """The camera's own rules, else ``"*"``; never another camera's."""
    found = rules.get(camera) or rules.get(DEFAULT_CAMERA)
    if found is None:
        raise RulesError(uncalibrated_message([camera], rules))
    return found


def uncalibrated_message(cameras: list[str], rules: dict[str, CameraRules]) -> str:
    return (f"camera(s) {', '.join(repr(c) for c in cameras)} have no calibration entry and the model has no '*' "
            f"entry (calibrated cameras: {', '.join(sorted(rules)) or 'none'}); they would be judged with another "
            f"camera's threshold: calibrate them (edge-calibrate --engine MODEL --camera NAME --good DIR --update "
            f"MODEL.manifest.json) or rename the --source to a calibrated camera")


def check_cameras(rules: dict[str, CameraRules], cameras: Iterable[str]) -> None:
    """Refuse to start when a camera has neither its own entry nor ``"*"``."""
    missing = [c for c in cameras if c not in rules and DEFAULT_CAMERA not in rules]
    if missing:
        raise RulesError(uncalibrated_message(missing, rules))


def describe_rules(manifest: dict, cameras: Iterable[str], threshold_override: float | None) -> list[str]:
    """One line per camera for the start-up log: which entry judges it and what that entry promises,
    so that whoever reads the log sees each line's threshold without opening the manifest."""
    entries = (manifest.get("calibration") or {}).get("cameras") or {}
    lines = []
    for camera in cameras:
        if threshold_override is not None:
            lines.append(f"camera {camera}: threshold {threshold_override:g} (--threshold, the operator's: no "
                         f"false-alarm promise)")
            continue
        name = camera if camera in entries else DEFAULT_CAMERA
        image = (entries.get(name) or {}).get("image") or {}
        promise = ""
        if image.get("target_far") is not None and image.get("n_good") is not None:
            promise = (f": false alarms <= {float(image['target_far']):.2%} with "
                       f"{float(image.get('confidence', 0.95)):.0%} confidence, fitted on {image['n_good']} good parts")
        lines.append(f"camera {camera}: threshold {image.get('threshold', float('nan')):g} from calibration entry "
                     f"{name!r}{' (the shared one)' if name == DEFAULT_CAMERA else ''}{promise}")
    return lines


def check_rois(rois: Iterable[str], cameras: Iterable[str]) -> None:
    """Refuse a --roi for a camera that no --source has (a typo would silently crop nothing)."""
    known = list(cameras)
    unknown = [c for c in rois if c not in known]
    if unknown:
        raise RulesError(f"--roi for camera(s) {', '.join(repr(c) for c in unknown)} that no --source has "
                         f"(cameras: {', '.join(known) or 'none'}): name the source, e.g. --source "
                         f"{unknown[0]}=0, or fix the --roi camera name")
