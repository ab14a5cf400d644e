# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""On a small trained model, DPM-Solver++ at 20 steps agrees with DDIM at 100 steps (issue 4 acceptance test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.data.disks import synthetic_disks
from monai_diffseg.engines import MaskDiffusionLoss, MaskDiffusionPrepareBatch
from monai_diffseg.inferers import DiffusionSegmentationInferer, DiffusionSegmentationTrainInferer
from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS, MedSegDiff
from monai_diffseg.schedulers import DPMSolverMultistepScheduler


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = (a * b).sum((1, 2, 3))
    return float((2 * inter / (a.sum((1, 2, 3)) + b.sum((1, 2, 3))).clamp_min(1e-6)).mean())


@pytest.mark.slow
def test_dpm_solver_20_steps_agrees_with_ddim_100_steps() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = synthetic_disks(128, 32, rng)
    x_test, y_test = synthetic_disks(8, 32, rng)
    net = MedSegDiff(2, 3, 1, **MEDSEGDIFF_CONFIGS["tiny"])
    train_sched = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=6,
        train_data_loader=[{"image": x_train[i : i + 16], "label": y_train[i : i + 16]} for i in range(0, 128, 16)],
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 2e-3),
        loss_function=MaskDiffusionLoss(aux_weight=0.5),
        inferer=DiffusionSegmentationTrainInferer(),
        prepare_batch=MaskDiffusionPrepareBatch(train_sched, 1, "sample"),
    ).run()
    net.eval()
    ddim = DDIMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    dpm = DPMSolverMultistepScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    ref = DiffusionSegmentationInferer(ddim, 100, num_samples=3, seed=0)(x_test, net) > 0.5
    fast = DiffusionSegmentationInferer(dpm, 20, num_samples=3, seed=0)(x_test, net) > 0.5
    assert _dice(ref.float(), y_test) > 0.8, "the model did not learn; the comparison would be meaningless"
    agreement = _dice(fast.float(), ref.float())
    print(f"Dice(DPM-Solver++ 20 steps, DDIM 100 steps) = {agreement:.4f}")
    assert agreement > 0.95
