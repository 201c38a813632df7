"""bench/detection.py may run twice side by side (different rows): each save merges its own rows into
the JSON as it is on disk, so neither run drops the other's rows or rewrites them with stale values."""
import json

from bench.detection import merge_into_file, replace_row


def _row(seed, name, auroc):
    return {"data": "elpv", "k": 10, "seed": seed, "row": name, "auroc": auroc}


def test_two_runs_keep_each_others_rows(tmp_path):
    path = tmp_path / "detection.json"
    path.write_text(json.dumps([_row(0, "old", 0.5), _row(1, "shared", 0.6)]))

    a, b = [], []  # each run's own rows, as main() keeps them
    replace_row(a, _row(2, "from_a", 0.7))
    merge_into_file(path, a)
    replace_row(b, _row(1, "shared", 0.9))  # b re-measures a row that was on disk when both started
    merge_into_file(path, b)
    replace_row(a, _row(3, "from_a_later", 0.8))
    final = merge_into_file(path, a)  # a never held "shared", so its older value cannot come back

    by_key = {(r["seed"], r["row"]): r["auroc"] for r in json.loads(path.read_text())}
    assert by_key == {(0, "old"): 0.5, (1, "shared"): 0.9, (2, "from_a"): 0.7, (3, "from_a_later"): 0.8}
    assert len(final) == 4
    assert not path.with_suffix(".tmp").exists()
