"""The issue-11 probes (ENS, feature-reconstruction LAMP) run end to end on the bundled sample at tiny
sizes; their figures come from full runs (docs/benchmarks.md), these check the wiring and the rows."""
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the train extra is not installed")

from bench import ens_probe, feature_lamp_probe  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "trainer" / "sample_data" / "elpv_mini"


@pytest.mark.timeout(300)
def test_feature_lamp_probe_rows_per_amplifier(tmp_path):
    out = tmp_path / "rows.json"
    assert feature_lamp_probe.main(["--data", str(SAMPLE), "--seeds", "0", "--size", "64", "--bank", "128",
                                    "--epochs", "1", "--work", str(tmp_path / "cache"), "--json", str(out),
                                    "--no-docs"]) == 0
    rows = json.loads(out.read_text())
    members = [r["member"] for r in rows]
    assert members[0] == "patch kNN"
    for amp in feature_lamp_probe.AMPLIFIERS:
        assert f"feature AE, {amp}" in members and f"patch kNN + feature AE ({amp}), sum" in members
    assert all(0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["miss_at_5"] <= 1.0 for r in rows)


@pytest.mark.timeout(300)
def test_ens_probe_scores_a_familiarity_run(tmp_path):
    from trainer.cli import main as edge_train
    run = tmp_path / "fam"
    assert edge_train(["familiarity", "--data", str(SAMPLE), "--k", "0", "--size", "64", "--standardize",
                       "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "ens.json"
    assert ens_probe.main(["--run", str(run), "--json", str(out), "--no-docs"]) == 0
    rows = json.loads(out.read_text())
    assert [r["member"] for r in rows] == ["familiarity", "ENS (input x gradient)", "hybrid familiarity + ENS (sum)"]
    assert all(math.isfinite(r["auroc"]) and 0.0 <= r["miss_at_5"] <= 1.0 for r in rows)
    # the scores are cached in the run with the test paths bench/detection.py restricts to a k-shot test set
    scores = ens_probe.ens_scores(run)
    split = json.loads((run / "split.json").read_text())
    assert sorted(scores["test_paths"]) == sorted(s["path"] for s in split["test"])
    assert list(scores["test_labels"]) == [s["label"] for s in split["test"]]
    assert len(scores["test_labels"]) == len(scores["test_ens"]) == len(scores["test_familiarity"])
    # a run retrained in place (another seed: another split and model) is scored again, not read from the cache
    assert edge_train(["familiarity", "--data", str(SAMPLE), "--k", "0", "--size", "64", "--standardize",
                       "--seed", "1", "--out", str(run), "--overwrite", "--quiet"]) == 0
    split = json.loads((run / "split.json").read_text())
    assert sorted(ens_probe.ens_scores(run)["test_paths"]) == sorted(s["path"] for s in split["test"])
    assert sorted(scores["test_paths"]) != sorted(s["path"] for s in split["test"])


@pytest.mark.timeout(300)
def test_tuned_head_bench_rows_and_partial_json(tmp_path):
    from bench import tuned_head
    out = tmp_path / "rows.json"
    assert tuned_head.main(["--data", str(SAMPLE), "--protocol", "dra", "--k", "2", "--seeds", "0", "--size", "64",
                            "--bank", "128", "--variants", "frozen", "tuned", "--work", str(tmp_path / "cache"),
                            "--json", str(out), "--no-docs"]) == 0
    doc = json.loads(out.read_text())
    members = [r["member"] for r in doc["rows"]]
    assert members == ["knn", "head_frozen", "head_tuned", "hybrid_frozen", "hybrid_tuned"]
    assert all(math.isfinite(r["auroc"]) and 0.0 <= r["miss_at_5"] <= 1.0 and r["k"] == 2 for r in doc["rows"])
    assert list((tmp_path / "cache" / SAMPLE.name).glob("maps_64_s*.npy"))  # stage maps cached for the next run


@pytest.mark.timeout(300)
def test_tuned_head_bench_knn_on_raw_input(tmp_path):
    """--knn-input raw: the kNN member reads maps of the unstandardised image, cached apart."""
    import numpy as np

    from bench import tuned_head
    out = tmp_path / "rows.json"
    assert tuned_head.main(["--data", str(SAMPLE), "--protocol", "dra", "--k", "2", "--seeds", "0", "--size", "64",
                            "--bank", "128", "--variants", "frozen", "--knn-input", "raw", "--coreset",
                            "--work", str(tmp_path / "cache"), "--json", str(out), "--no-docs"]) == 0
    doc = json.loads(out.read_text())
    assert doc["knn_input"] == "raw" and doc["coreset"] is True
    assert [r["member"] for r in doc["rows"]] == ["knn", "head_frozen", "hybrid_frozen"]
    cache = tmp_path / "cache" / SAMPLE.name
    raw, std = np.load(cache / "maps_64_raw_s2.npy"), np.load(cache / "maps_64_s2.npy")
    assert raw.shape == std.shape and not np.array_equal(raw, std)
