"""The one preprocessing function the trainer and the edge share."""
import numpy as np
import pytest

from edge.preprocess import PreprocessError, to_model_input


def test_gray_and_colour_frames():
    gray = np.full((40, 60), 255, np.uint8)
    x = to_model_input(gray, 16, 1)
    assert x.shape == (1, 16, 16) and x.dtype == np.float32
    assert np.allclose(x, 1.0)
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[..., 1] = 51
    y = to_model_input(rgb, 8, 3)
    assert y.shape == (3, 8, 8)
    assert np.allclose(y[1], 0.2) and np.allclose(y[0], 0) and np.allclose(y[2], 0)


def test_area_resize_averages():
    frame = np.zeros((4, 4), np.uint8)
    frame[:2, :2] = 200
    x = to_model_input(frame, 2, 1)
    assert x[0, 0, 0] == pytest.approx(200 / 255) and x[0, 1, 1] == 0


@pytest.mark.parametrize("frame, channels, match", [
    (np.zeros((8, 8, 3), np.uint8), 1, "3 channel"),
    (np.zeros((8, 8), np.uint8), 3, "1 channel"),
    (np.zeros((8, 8), np.float32), 1, "uint8"),
    (np.zeros((0, 8), np.uint8), 1, "shape"),
    ([[0, 1]], 1, "uint8"),
])
def test_bad_frames_are_rejected(frame, channels, match):
    with pytest.raises(PreprocessError, match=match):
        to_model_input(frame, 8, channels)
