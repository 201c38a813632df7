"""Two-head scorer: residual module, heads, determinism, deviation loss, pretrained loading."""
import pytest
import torch

from trainer.twohead.backbone import ResNet18Features, load_pretrained
from trainer.twohead.loss import deviation_loss, two_head_loss
from trainer.twohead.torch_model import (NormalHead, PatchResidualHead, TwoHeadOutput, TwoHeadScorer,
                                         evaluation_offsets, min_feature_size)


def test_min_feature_size_and_evaluation_offsets():
    assert min_feature_size() == 7  # 7 - 4 + 1 = 4 distinct offsets of a 4x4 block
    assert evaluation_offsets(7) == [(0, 1, 2, 3), (1, 2, 3, 0), (2, 3, 0, 1), (3, 0, 1, 2)]
    # 14x14 (448 px, stride 32): block 8, offsets 0..6 spread evenly
    assert evaluation_offsets(14)[0] == (0, 2, 4, 6)


@pytest.mark.parametrize("size", [7, 8, 14])
def test_residual_is_alternating_sum_of_diagonal_blocks(size):
    head = PatchResidualHead(4).eval()
    f = torch.randn(2, 4, size, size)
    b = size // 2 + 1
    offsets = (3, 0, 2, 1)
    blocks = [f[:, :, o:o + b, o:o + b] for o in offsets]
    expected = head.scoring(head.conv(blocks[3] - blocks[2] + blocks[1] - blocks[0])).abs()
    got = head.patch_scores(f, offsets)
    assert got.shape == (2, 1, b, b)
    torch.testing.assert_close(got, expected)


def test_residual_head_outputs_and_pooling():
    head = PatchResidualHead(8, topk_fraction=0.1).eval()
    f = torch.randn(3, 8, 8, 8)
    score, patch_map = head(f)
    assert score.shape == (3,) and patch_map.shape == (3, 1, 8, 8)
    assert torch.all(score >= 0) and torch.all(patch_map >= 0)
    # top 10% of a 5x5 map is max(int(2.5), 1) = 2 cells
    p = torch.arange(25.0).view(1, 1, 5, 5)
    assert head.pool(p).item() == pytest.approx((24 + 23) / 2)


def test_residual_head_rejects_small_maps():
    with pytest.raises(ValueError, match=r"too small .*\(needs >= 7\)"):
        PatchResidualHead(4).eval()(torch.randn(1, 4, 6, 6))


def test_normal_head_is_non_negative():
    out = NormalHead(16)(torch.randn(5, 16, 4, 4))
    assert out.shape == (5,) and torch.all(out >= 0)


def test_inference_is_deterministic_training_is_not():
    torch.manual_seed(0)
    model = TwoHeadScorer(1, width=8, output_stride=16, scales=(1.0,), backbone="resnet18").eval()
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert isinstance(a, TwoHeadOutput)
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)
    torch.testing.assert_close(a.score, a.anomaly_score - a.normal_score)
    assert a.anomaly_map.shape == (2, 1, 128, 128)
    model.train()
    with torch.no_grad():
        draws = {round(model(x).anomaly_score[0].item(), 6) for _ in range(6)}
    assert len(draws) > 1  # random offsets per forward in training


def test_two_scales_average():
    model = TwoHeadScorer(3, width=8, output_stride=32, scales=(1.0, 0.5), backbone="resnet18").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 448, 448))
    assert out.score.shape == (1,) and out.anomaly_map.shape == (1, 1, 448, 448)


def test_deviation_loss_by_hand():
    s = torch.tensor([0.5, -2.0, 1.0, 6.0])
    y = torch.tensor([0, 0, 1, 1])
    # normal: |0.5| + |-2| ; anomalous: max(0, 5-1) + max(0, 5-6)
    assert deviation_loss(s, y).item() == pytest.approx((0.5 + 2.0 + 4.0 + 0.0) / 4)
    labels = torch.tensor([0, 1, 2])
    normal, anomaly = torch.tensor([5.0, 0.0, 0.0]), torch.tensor([0.0, 5.0, 5.0])
    assert two_head_loss(normal, anomaly, labels).item() == pytest.approx(0.0)
    assert two_head_loss(anomaly, normal, labels).item() > 3


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    source = ResNet18Features(3, 64, 32)
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    gray = ResNet18Features(1, 64, 16)  # dilated variant shares the parameter names
    unused = load_pretrained(gray, path)
    assert unused == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(gray.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(gray.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="width 64"):
        load_pretrained(ResNet18Features(1, 32), tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError):
        load_pretrained(ResNet18Features(1, 64), tmp_path / "x.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable state dict"):
        load_pretrained(ResNet18Features(1, 64), tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "part.pth")
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(ResNet18Features(1, 64), tmp_path / "part.pth")


@pytest.mark.parametrize("size", [7, 8, 14])
def test_heatmap_positions_cover_every_feature_cell(size):
    from trainer.twohead.torch_model import heatmap_positions
    b = size // 2 + 1
    covered = torch.zeros(size, size, dtype=torch.bool)
    sets = heatmap_positions(size)
    assert sets[0] == tuple((o, o) for o in evaluation_offsets(size)[0])  # the diagonal set first
    for positions in sets:
        for r, c in positions:
            covered[r:r + b, c:c + b] = True
    assert covered.all()


def test_heatmap_localises_a_feature_anomaly_off_the_diagonal():
    """A head that scores feature magnitude must light up the corner cell where the features differ."""
    torch.manual_seed(0)
    head = PatchResidualHead(4).eval()
    with torch.no_grad():
        head.conv[0].weight.zero_()
        # channels 0, 1 pass the input, channels 2, 3 its negative: after the ReLU the
        # scoring conv sums |x0| + |x1|, whatever sign a block has in the residual
        head.conv[0].weight[:, :, 1, 1] = torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, -1, 0, 0]])
        head.conv[0].bias.zero_()
        head.conv[1].running_mean.zero_(), head.conv[1].running_var.fill_(1)
        head.scoring.weight.fill_(1.0), head.scoring.bias.zero_()
        f = torch.zeros(1, 4, 8, 8)
        f[0, :, 0, 7] = 3.0  # top-right corner: off the diagonal
        _, heat = head(f)
    assert heat.shape == (1, 1, 8, 8)
    assert torch.nonzero(heat[0, 0] == heat.max()).tolist() == [[0, 7]]
