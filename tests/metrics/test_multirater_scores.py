# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Per-rater Dice and HM-IoU of MultiRaterScores, checked by hand; a one-member ensemble (U-Net) is scored too."""

from __future__ import annotations

import pytest
import torch

from monai_diffseg.metrics import MultiRaterScores, compute_per_rater_dice


def _mask(*cols: int, width: int = 4) -> torch.Tensor:
    m = torch.zeros(1, 2, width)
    m[0, :, list(cols)] = 1
    return m


def test_per_rater_dice_by_hand() -> None:
    pred = _mask(0, 1)  # 4 pixels
    raters = torch.cat([_mask(0, 1), _mask(1, 2), _mask(3), torch.zeros(1, 2, 4)])
    dice = compute_per_rater_dice(pred, raters)
    # identical: 1; overlap 2 of 4+4: 0.5; disjoint: 0; empty rater vs non-empty pred: 0
    torch.testing.assert_close(dice, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert compute_per_rater_dice(torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)).tolist() == [1.0, 1.0]  # both empty
    with pytest.raises(ValueError, match="Invertd"):
        compute_per_rater_dice(pred, torch.zeros(2, 3, 4))


def test_scores_by_hand_and_one_member_ensemble() -> None:
    raters = torch.cat([_mask(0, 1), _mask(1, 2)])  # (2, 2, 4)
    item = {
        "pred": _mask(0, 1),
        "raters": raters,
        "samples": torch.stack([_mask(0, 1) * 0.9, _mask(1, 2) * 0.6]),  # (E=2, 1, 2, 4) probabilities
        "raters_net": raters.unsqueeze(1),
    }
    s = MultiRaterScores()(item)
    assert s["dice_rater1"] == pytest.approx(1.0) and s["dice_rater2"] == pytest.approx(0.5)
    assert s["dice_raters"] == pytest.approx(0.75)
    assert s["hm_iou"] == pytest.approx(1.0)  # each sample matches one rater exactly
    # a U-Net: one member, matched to every rater in turn -> mean IoU (1 + 1/3) / 2
    unet = MultiRaterScores()({**item, "samples": _mask(0, 1)[None]})
    assert unet["hm_iou"] == pytest.approx((1.0 + 1.0 / 3.0) / 2.0)
    assert MultiRaterScores()({"pred": item["pred"], "samples": item["samples"]}) == {}  # unlabelled


def test_threshold_applies_to_samples() -> None:
    raters = _mask(0, 1).unsqueeze(0)  # (1, 1, 2, 4)
    item = {"samples": (_mask(0, 1) * 0.4)[None], "raters_net": raters}
    assert MultiRaterScores(threshold=0.5)(item)["hm_iou"] == pytest.approx(0.0)
    assert MultiRaterScores(threshold=0.3)(item)["hm_iou"] == pytest.approx(1.0)
