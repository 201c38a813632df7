"""The operator's alert thumbnail and the engineer's report blend the heatmap the same way (issue 12 item 6)."""
import cv2
import numpy as np

from edge.overlay import HEATMAP_WEIGHT, heatmap_overlay
from edge.stages.alert import heat_thumbnail
from trainer.visualize import overlay


def test_thumbnail_and_report_overlay_are_the_same_picture():
    pixels = np.tile(np.linspace(40, 220, 48).astype(np.uint8), (1, 48, 1))   # smooth: JPEG keeps it
    heatmap = np.zeros((48, 48), np.float32)
    heatmap[10:20, 30:40] = 4.0
    report = overlay(pixels.astype(np.float32) / 255, heatmap, 0.0, 4.0)
    thumb = cv2.imdecode(np.frombuffer(heat_thumbnail(pixels, heatmap, 4.0), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == report.shape == (48, 48, 3)
    assert np.abs(thumb.astype(int) - report.astype(int)).mean() < 4   # JPEG noise only (chroma subsampling at the hot square)
    # red where the heatmap is high: the blend puts HEATMAP_WEIGHT of JET's red on the image
    hot = heatmap_overlay(np.zeros((1, 4, 4), np.uint8), np.full((4, 4), 1.0), 0.0, 1.0)
    assert hot[0, 0, 2] == round(HEATMAP_WEIGHT * cv2.applyColorMap(np.full((1, 1), 255, np.uint8),
                                                                     cv2.COLORMAP_JET)[0, 0, 2])
