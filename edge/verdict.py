"""Raw model score -> normalised score and verdict, with constants from calibration.json.

numpy only: this runs on the line machine. calibration/ fits the constants
(calibration.json) and docs/calibration.md states these same formulas.
"""
from __future__ import annotations

import numpy as np


def normalised_score(raw, threshold: float, scale: float) -> np.ndarray:
    """Logistic map of a raw score to [0, 1], centred on the alert threshold:

        n = 1 / (1 + exp(-(raw - threshold) / scale))

    so n > 0.5 exactly when the part is flagged (raw > threshold), and ``scale``
    (the robust spread of good-part scores) sets how fast it saturates. Monotone,
    so it changes no ranking and no metric."""
    z = (np.asarray(raw, dtype=np.float64) - threshold) / scale
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = logistic(z), without overflow for large |z|


def is_alert(raw, threshold: float) -> np.ndarray:
    """A part is flagged when its raw score is strictly above the threshold."""
    return np.asarray(raw) > threshold
