"""Calibration: alert thresholds with a known false-alarm rate, and INT8 calibration sets."""
