import numpy as np
import pytest

from edge.regions import find_regions
from edge.verdict import is_alert, normalised_score


def test_normalised_score_is_centred_on_the_threshold():
    raw = np.array([-1e6, 1.0, 2.0, 3.0, 1e6])
    n = normalised_score(raw, threshold=2.0, scale=0.5)
    assert n[2] == 0.5 and n[0] == 0.0 and n[-1] == 1.0
    assert n[3] == pytest.approx(1 / (1 + np.exp(-2)))
    assert np.all(np.diff(n) > 0)
    assert list(is_alert(raw, 2.0)) == [False, False, False, True, True]
    assert list(n > 0.5) == list(is_alert(raw, 2.0))


def test_find_regions():
    m = np.zeros((20, 30))
    m[2:5, 3:9] = 1.0       # 18 px, peak 1
    m[10:12, 20:21] = 2.0   # 2 px, peak 2
    m[15, 0] = 0.9          # 1 px
    r = find_regions(m, 0.5, min_area=2)
    assert r == [{"box": [20, 10, 1, 2], "area": 2, "peak": 2.0},
                 {"box": [3, 2, 6, 3], "area": 18, "peak": 1.0}]
    assert len(find_regions(m, 0.5)) == 3
    assert find_regions(m, 5.0) == []
    diag = np.eye(4)
    assert len(find_regions(diag, 0.5)) == 1  # 8-connected
    with pytest.raises(ValueError, match="2-D"):
        find_regions(np.zeros((2, 2, 2)), 0.1)
