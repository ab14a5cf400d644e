# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Shift scores (anchor disagreement, entropy per area, condition-feature distance): hand values and wiring."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffseg.metrics import (
    ShiftScore,
    compute_anchor_disagreement,
    compute_ensemble_dice_error,
    compute_entropy_per_area,
    compute_feature_distance,
    condition_feature_statistics,
    condition_features,
    input_features,
    shift_statistics,
    shift_stats_file,
)
from monai_diffseg.networks.nets import MedSegDiff


def test_anchor_disagreement_hand_values() -> None:
    anchor = torch.zeros(3, 1, 2, 4)
    fused = torch.zeros(3, 1, 2, 4)
    anchor[0, 0, 0, :] = 0.9  # 4 pixels
    fused[0, 0, 0, :2] = 0.6  # 2 of them -> Dice 2 * 2 / 6
    anchor[1, 0, 1, 1] = 0.7  # disjoint -> Dice 0
    fused[1, 0, 0, 0] = 0.8
    # image 2: both empty -> Dice 1, disagreement 0
    out = compute_anchor_disagreement(anchor, fused)
    assert torch.allclose(out, torch.tensor([1 - 4 / 6, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        compute_anchor_disagreement(anchor, fused[:, :, :1])


def test_ensemble_dice_error_hand_values() -> None:
    members = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    fused = members.mean(0, keepdim=True)  # [1, 0.5, 0, 0] -> fused mask {0, 1} (0.5 counts as foreground)
    # member 0 equals the fused mask (Dice 1); member 1: Dice 2 * 1 / (1 + 2) = 2 / 3
    assert math.isclose(float(compute_ensemble_dice_error(members, fused)), (0 + 1 / 3) / 2, rel_tol=1e-12)
    anchor = torch.tensor([0.0, 0.0, 0.9, 0.0]).reshape(1, 1, 2, 2)  # disjoint from the fused mask: Dice 0
    out = compute_ensemble_dice_error(members, fused, anchor)
    assert out.dtype == torch.float64 and out.ndim == 0
    assert math.isclose(float(out), (0 + 1 / 3 + 1) / 3, rel_tol=1e-12)
    # (C, *S) fused / anchor without the batch dimension give the same value
    assert math.isclose(float(compute_ensemble_dice_error(members, fused[0], anchor[0])), float(out))
    # all empty: empty vs empty is Dice 1 -> 0; an anchor with foreground alone adds 1 / (E + 1)
    empty = torch.full((3, 1, 2, 2), 0.2)
    assert float(compute_ensemble_dice_error(empty, empty.mean(0, keepdim=True))) == 0.0
    assert math.isclose(float(compute_ensemble_dice_error(empty, empty.mean(0), anchor)), 1 / 4, rel_tol=1e-12)
    # two channels: Dice over all channels and pixels together
    two = torch.zeros(2, 2, 1, 2)
    two[:, 0, 0, 0] = 1.0  # both members: channel 0 pixel 0
    two[0, 1, 0, 1] = 1.0  # member 0 only: channel 1 pixel 1 (fused mean 0.5 -> in the fused mask)
    # fused mask has 2 pixels; member 0 equal (Dice 1), member 1 has 1 of 2: Dice 2 / 3
    assert math.isclose(float(compute_ensemble_dice_error(two, two.mean(0))), 1 / 6, rel_tol=1e-12)
    with pytest.raises(ValueError, match="fused"):
        compute_ensemble_dice_error(members, fused[..., :1])
    with pytest.raises(ValueError, match="anchor"):
        compute_ensemble_dice_error(members, fused, torch.zeros(1, 2, 2, 2))


def test_entropy_per_area_hand_value() -> None:
    prob = torch.tensor([0.5, 0.5, 0.0, 1.0]).reshape(1, 1, 2, 2)
    # two pixels at p = 0.5 carry ln 2 each; three pixels are >= 0.5
    assert math.isclose(float(compute_entropy_per_area(prob)[0]), 2 * math.log(2) / 3, rel_tol=1e-9)
    empty = torch.full((1, 1, 2, 2), 0.25)  # no foreground: divided by 1
    expected = 4 * (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert math.isclose(float(compute_entropy_per_area(empty)[0]), expected, rel_tol=1e-9)


def test_feature_distance_hand_value() -> None:
    stats = {"mean": torch.zeros(2), "std": torch.full((2,), 2.0)}
    assert torch.allclose(compute_feature_distance(torch.tensor([[2.0, 4.0]]), stats), torch.tensor([2.5]).double())
    with pytest.raises(ValueError, match="statistics"):
        compute_feature_distance(torch.zeros(1, 3), stats)


def _net() -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), num_head_channels=8).eval()


def test_shift_score_matches_manual_and_grows_off_distribution(tmp_path) -> None:
    net = _net()
    g = torch.Generator().manual_seed(0)
    train = [torch.rand(3, 16, 16, generator=g) for _ in range(6)]
    stats = condition_feature_statistics(net, train)
    assert stats["mean"].shape == (16,) and torch.all(stats["std"] > 0)
    path = tmp_path / "stats.pt"
    torch.save(stats, path)
    image = torch.rand(3, 16, 16, generator=g)
    samples = torch.rand(4, 1, 16, 16, generator=g)
    scores = ShiftScore(net, feature_stats=str(path))({"image": image, "samples": samples})
    with torch.no_grad():
        anchor = torch.sigmoid(net.anchor(net.encode_condition(image[None])))
        feats = condition_features(net, image[None])
    fused = samples.mean(0, keepdim=True)
    assert math.isclose(scores["anchor_disagreement"], float(compute_anchor_disagreement(anchor, fused)[0]))
    assert math.isclose(scores["entropy_per_area"], float(compute_entropy_per_area(fused)[0]))
    expected = float(compute_ensemble_dice_error(samples, fused, anchor))
    assert math.isclose(scores["ensemble_dice_error"], expected)
    assert math.isclose(scores["feature_distance"], float(compute_feature_distance(feats, stats)[0]), rel_tol=1e-6)
    # over the training images themselves the mean squared z-score is (n - 1) / n (unbiased std, n = 6)
    on_train = [
        ShiftScore(net, feature_stats=stats)({"image": x, "samples": samples})["feature_distance"] for x in train
    ]
    assert math.isclose(sum(on_train) / len(on_train), 5 / 6, rel_tol=1e-4)
    assert "feature_distance" not in ShiftScore(net)({"image": image, "samples": samples})


def test_shift_score_without_anchor_network() -> None:
    from monai.networks.nets import UNet

    unet = UNet(2, 3, 1, channels=(4, 8), strides=(2,))
    samples = torch.tensor([0.5, 0.5, 0.0, 1.0]).reshape(1, 1, 2, 2)
    out = ShiftScore(unet)({"image": torch.rand(3, 2, 2), "samples": samples})
    assert out["anchor_disagreement"] is None and math.isclose(out["entropy_per_area"], 2 * math.log(2) / 3)
    # one member equal to its own fused mask: the members-only estimate is 0
    assert out["ensemble_dice_error"] == 0.0
    two = torch.stack([samples[0], torch.zeros(1, 2, 2)])  # fused mean {0.25, 0.25, 0, 0.5} -> mask: pixel 3 only
    out = ShiftScore(unet)({"image": torch.rand(3, 2, 2), "samples": two})
    # member 0 (3 pixels incl. pixel 3): Dice 2 / 4; member 1 (empty): Dice 0
    assert math.isclose(out["ensemble_dice_error"], (0.5 + 1.0) / 2)


def test_shift_score_errors() -> None:
    net = _net()
    with pytest.raises(ValueError, match="samples"):
        ShiftScore(net)({"image": torch.rand(3, 16, 16)})
    with pytest.raises(ValueError, match="resolution"):
        ShiftScore(net)({"image": torch.rand(3, 16, 16), "samples": torch.rand(2, 1, 32, 32)})
    with pytest.raises(ValueError, match="mean"):
        ShiftScore(net, feature_stats={"mean": torch.zeros(2)})


def test_input_features_hand_values() -> None:
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    f = input_features(x, eps=0.0)
    assert f.shape == (1, 4) and f.dtype == torch.float64
    # mean 1/9; population std sqrt(1/9 - 1/81); forward differences on the common 2x2 grid: |grad| = [[0, 1],
    # [1, sqrt 2]]; Laplacian at the one interior pixel: (0 - 2 + 0) + (0 - 2 + 0) = -4
    expected = [1 / 9, math.log(math.sqrt(8) / 9), math.log((2 + math.sqrt(2)) / 4), math.log(4.0)]
    assert torch.allclose(f[0], torch.tensor(expected, dtype=torch.float64))
    # a linear ramp has no curvature: log(0 + eps)
    ramp = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 1, 5, 5)
    assert math.isclose(float(input_features(ramp, eps=1e-6)[0, 3]), math.log(1e-6), rel_tol=1e-9)
    with pytest.raises(ValueError, match="spatial size"):
        input_features(torch.zeros(1, 1, 2, 5))


def test_input_features_contrast_and_3d() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 9, generator=g)
    m = x.mean(dim=(2, 3), keepdim=True)
    c = 0.25
    f, fc = input_features(x, eps=0.0), input_features((x - m) * c + m, eps=0.0)
    # contrast keeps the means and moves every log-scale feature by log c
    assert torch.allclose(fc[:, :3], f[:, :3], atol=1e-6)
    assert torch.allclose(fc[:, 3:] - f[:, 3:], torch.full((2, 9), math.log(c), dtype=torch.float64), atol=1e-6)
    # blur lowers the sharpness features (gradient, Laplacian), noise on the smoother image raises them again
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    fb, fn = input_features(blurred), input_features(blurred + 0.2 * torch.randn(x.shape, generator=g))
    assert torch.all(fb[:, 6:] < f[:, 6:]) and torch.all(fn[:, 6:] > fb[:, 6:])
    vol = torch.rand(1, 2, 4, 5, 6, generator=g)
    assert input_features(vol).shape == (1, 8)
    assert math.isclose(float(input_features(torch.ones(1, 1, 3, 3, 3), eps=1e-6)[0, 2]), math.log(1e-6), rel_tol=1e-9)


def test_shift_statistics_and_input_distance(tmp_path) -> None:
    net = _net()
    g = torch.Generator().manual_seed(1)
    train = [torch.rand(3, 16, 16, generator=g) for _ in range(8)]
    stats = shift_statistics(train, net)
    assert set(stats) == {"input", "feature", "num_images"} and stats["num_images"] == 8
    assert stats["input"]["mean"].shape == (12,) and stats["feature"]["mean"].shape == (16,)
    assert torch.allclose(stats["feature"]["mean"], condition_feature_statistics(net, train)["mean"])
    assert torch.allclose(stats["input"]["mean"], torch.cat([input_features(x[None]) for x in train]).mean(0))
    assert "feature" not in shift_statistics(train)  # no network: input statistics only
    path = tmp_path / "models" / "shift_stats.pt"
    path.parent.mkdir()
    torch.save(stats, path)
    assert shift_stats_file(tmp_path / "models" / "model.pt") == str(path)
    samples = torch.rand(3, 1, 16, 16, generator=g)
    score = ShiftScore(net, feature_stats=str(path))
    # the training images themselves: mean squared z-score (n - 1) / n (unbiased std, n = 8)
    on_train = [score({"image": x, "samples": samples}) for x in train]
    assert math.isclose(sum(o["input_distance"] for o in on_train) / 8, 7 / 8, rel_tol=1e-4)
    assert math.isclose(sum(o["feature_distance"] for o in on_train) / 8, 7 / 8, rel_tol=1e-4)
    image = train[0]
    expected = float(compute_feature_distance(input_features(image[None]), stats["input"])[0])
    assert math.isclose(on_train[0]["input_distance"], expected)
    # contrast loss moves the input far from the training statistics
    low = (image - image.mean()) * 0.2 + image.mean()
    assert score({"image": low, "samples": samples})["input_distance"] > 10 * max(o["input_distance"] for o in on_train)
    # input statistics only: no feature_distance; and a network without a condition branch still gets input_distance
    from monai.networks.nets import UNet

    only_input = {"input": stats["input"]}
    out = ShiftScore(UNet(2, 3, 1, channels=(4, 8), strides=(2,)), feature_stats=only_input)(
        {"image": image, "samples": samples}
    )
    assert math.isclose(out["input_distance"], expected) and "feature_distance" not in out
    # the older {"mean", "std"} form is the condition-feature part
    old = ShiftScore(net, feature_stats=stats["feature"])({"image": image, "samples": samples})
    assert math.isclose(old["feature_distance"], on_train[0]["feature_distance"]) and "input_distance" not in old


def test_shift_score_missing_statistics_file_warns(tmp_path) -> None:
    net = _net()
    missing = shift_stats_file(tmp_path / "model.pt")
    with pytest.warns(UserWarning, match="shift_stats.pt.*shift_statistics#model_file"):
        score = ShiftScore(net, feature_stats=missing)
    out = score({"image": torch.rand(3, 16, 16), "samples": torch.rand(2, 1, 16, 16)})
    assert "input_distance" not in out and "feature_distance" not in out and out["anchor_disagreement"] is not None
    with pytest.raises(ValueError, match="'input' and/or 'feature'"):
        ShiftScore(net, feature_stats={"num_images": 3})
    with pytest.raises(ValueError, match=r"feature_stats\['input'\]"):
        ShiftScore(net, feature_stats={"input": {"mean": torch.zeros(2)}})
