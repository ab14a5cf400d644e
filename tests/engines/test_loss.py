# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.engines.loss.MaskDiffusionLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from monai_diffseg.engines.loss import MaskDiffusionLoss


def _data(channels: int = 1, n: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    pred = {"pred": torch.randn(n, channels, 8, 8, generator=g), "anchor": torch.randn(n, channels, 8, 8, generator=g)}
    if channels == 1:
        mask = (torch.rand(n, 1, 8, 8, generator=g) > 0.5).float()
    else:
        idx = torch.randint(0, channels, (n, 8, 8), generator=g)
        mask = F.one_hot(idx, channels).permute(0, 3, 1, 2).float()
    target = {"target": torch.randn(n, channels, 8, 8, generator=g), "mask": mask}
    return pred, target


def test_mse_equals_functional() -> None:
    pred, target = _data()
    loss = MaskDiffusionLoss()
    expected = F.mse_loss(pred["pred"], target["target"])
    assert torch.allclose(loss(pred["pred"], target["target"]), expected)  # plain tensors
    assert torch.allclose(loss(pred, target), expected)  # dicts; anchor ignored with aux_weight=0
    assert torch.allclose(MaskDiffusionLoss("l1")(pred, target), F.l1_loss(pred["pred"], target["target"]))


@pytest.mark.parametrize("channels,kwargs", [(1, {"sigmoid": True}), (3, {"softmax": True})])
def test_aux_term_is_weighted_dice_ce(channels: int, kwargs: dict) -> None:
    pred, target = _data(channels)
    loss = MaskDiffusionLoss(aux_weight=0.3)(pred, target)
    manual = F.mse_loss(pred["pred"], target["target"]) + 0.3 * DiceCELoss(**kwargs)(pred["anchor"], target["mask"])
    assert torch.allclose(loss, manual, atol=1e-6)
    assert loss > F.mse_loss(pred["pred"], target["target"])


def test_custom_aux_loss_and_gradient() -> None:
    pred, target = _data()
    pred = {k: v.clone().requires_grad_(True) for k, v in pred.items()}
    loss = MaskDiffusionLoss(aux_weight=2.0, aux_loss=DiceLoss(sigmoid=True))(pred, target)
    manual = F.mse_loss(pred["pred"], target["target"]) + 2.0 * DiceLoss(sigmoid=True)(pred["anchor"], target["mask"])
    assert torch.allclose(loss, manual)
    loss.backward()
    assert pred["pred"].grad.abs().sum() > 0 and pred["anchor"].grad.abs().sum() > 0


def test_aux_requested_without_anchor() -> None:
    pred, target = _data()
    loss = MaskDiffusionLoss(aux_weight=1.0)
    with pytest.raises(ValueError, match="anchor"):
        loss({"pred": pred["pred"]}, target)
    with pytest.raises(ValueError, match="anchor"):
        loss(pred["pred"], target)
    with pytest.raises(ValueError, match="mask"):
        loss(pred, target["target"])  # targets without the {0, 1} mask


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\).*\(2, 3, 8, 8\)"):
        MaskDiffusionLoss()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError):
        MaskDiffusionLoss("huber")
