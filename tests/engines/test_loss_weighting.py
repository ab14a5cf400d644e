# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Min-SNR-gamma loss weighting (Hang et al. 2023): weights, prepare-batch wiring, weighted loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler

from monai_diffseg.engines import MaskDiffusionLoss, MaskDiffusionPrepareBatch, min_snr_weights


def test_min_snr_weights_hand_values() -> None:
    # a_t = 0.9 -> SNR 9; a_t = 0.5 -> SNR 1; a_t = 0.1 -> SNR 1/9
    a = torch.tensor([0.9, 0.5, 0.1])
    snr = torch.tensor([9.0, 1.0, 1 / 9])
    clamped = torch.tensor([5.0, 1.0, 1 / 9])
    assert torch.allclose(min_snr_weights(a, "sample", 5.0), clamped)
    assert torch.allclose(min_snr_weights(a, "epsilon", 5.0), torch.tensor([5 / 9, 1.0, 1.0]))
    assert torch.allclose(min_snr_weights(a, "v_prediction", 5.0), clamped / (snr + 1))
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weights(a, "sample", 0.0)


def test_prepare_batch_adds_normalised_weights() -> None:
    sched = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    pb = MaskDiffusionPrepareBatch(sched, prediction_type="sample", loss_weighting="min_snr", timestep_range=(0, 500))
    assert pb.weights is not None and torch.isclose(pb.weights[:500].mean(), torch.tensor(1.0))
    batch = {"image": torch.rand(4, 3, 8, 8), "label": (torch.rand(4, 1, 8, 8) > 0.5).float()}
    torch.manual_seed(0)
    _, targets, _, kw = pb(batch)
    raw = min_snr_weights(sched.alphas_cumprod, "sample")
    assert torch.allclose(targets["weight"], raw[kw["timesteps"]] / raw[:500].mean())
    plain = MaskDiffusionPrepareBatch(sched, prediction_type="sample")
    assert "weight" not in plain(batch)[1]
    with pytest.raises(ValueError):
        MaskDiffusionPrepareBatch(sched, prediction_type="sample", loss_weighting="snr")


def test_weighted_loss_equals_manual_and_unit_weights_equal_plain() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    w = torch.tensor([0.5, 2.0, 0.0])
    per_sample = ((pred - target) ** 2).flatten(1).mean(1)
    loss = MaskDiffusionLoss()({"pred": pred}, {"target": target, "weight": w})
    assert torch.allclose(loss, (w * per_sample).mean())
    ones = MaskDiffusionLoss()({"pred": pred}, {"target": target, "weight": torch.ones(3)})
    assert torch.allclose(ones, F.mse_loss(pred, target))
    with pytest.raises(ValueError, match="weight"):
        MaskDiffusionLoss()({"pred": pred}, {"target": target, "weight": torch.ones(2)})
