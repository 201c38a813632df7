"""The one robust location/scale estimate of the project (numpy only, no torch).

The hybrid standardises each member's scores with it (trainer/hybrid/fusion.py), and
calibration takes the normalisation scale of the good scores with it
(calibration/calibrate.py): one definition, so "one robust standard deviation" means the
same thing in both places.
"""
from __future__ import annotations

import numpy as np

MAD_TO_STD = 1.4826  # MAD of a normal distribution x 1.4826 = its standard deviation


def robust_center_scale(values) -> tuple[float, float]:
    """Median and 1.4826 * MAD; the standard deviation if the MAD is 0 (mostly constant data).
    Non-finite values and all-equal values are errors: neither has a scale."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("cannot take a robust scale of no values")
    if not np.isfinite(v).all():
        raise ValueError(f"{int((~np.isfinite(v)).sum())} of {v.size} scores are not finite: no robust scale")
    center = float(np.median(v))
    scale = MAD_TO_STD * float(np.median(np.abs(v - center)))
    if scale <= 0:
        scale = float(v.std())
    if not scale > 0:
        raise ValueError(f"all {v.size} scores are equal ({center:g}): no robust scale")
    return center, scale
