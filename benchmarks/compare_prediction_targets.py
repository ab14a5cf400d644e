# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Compare diffusion training targets (epsilon / sample (x0) / v_prediction) at equal, short training.

Trains the same tiny MedSegDiff with MONAI's SupervisedTrainer on synthetic disks and samples with DDIM; prints the
Dice of the fused ensemble for each target and the anchor head's Dice. Run:

    python benchmarks/compare_prediction_targets.py [--epochs 8] [--size 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.data.disks import synthetic_disks
from monai_diffseg.engines import MaskDiffusionLoss, MaskDiffusionPrepareBatch
from monai_diffseg.inferers import DiffusionSegmentationInferer, DiffusionSegmentationTrainInferer
from monai_diffseg.networks.nets import MEDSEGDIFF_CONFIGS, MedSegDiff


def dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    inter = (pred * label).sum((1, 2, 3))
    return float((2 * inter / (pred.sum((1, 2, 3)) + label.sum((1, 2, 3))).clamp_min(1e-6)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x_train, y_train = synthetic_disks(256, args.size, rng, min_radius_frac=1 / 10)
    x_test, y_test = synthetic_disks(16, args.size, rng, min_radius_frac=1 / 10)
    batches = [{"image": x_train[i : i + 16], "label": y_train[i : i + 16]} for i in range(0, 256, 16)]
    print(f"{'target':<14}{'train s':>9}{'Dice@10':>9}{'Dice@50':>9}{'anchor':>8}")
    for target in ("epsilon", "v_prediction", "sample"):
        torch.manual_seed(args.seed)
        net = MedSegDiff(2, 3, 1, **MEDSEGDIFF_CONFIGS["tiny"])
        sched = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type=target)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=args.epochs,
            train_data_loader=batches,
            network=net,
            optimizer=torch.optim.AdamW(net.parameters(), 2e-3),
            loss_function=MaskDiffusionLoss(aux_weight=0.5),
            inferer=DiffusionSegmentationTrainInferer(),
            prepare_batch=MaskDiffusionPrepareBatch(sched, 1, target),
        )
        start = time.time()
        trainer.run()
        seconds = time.time() - start
        net.eval()
        scores = []
        for steps in (10, 50):
            sampler = DDIMScheduler(1000, schedule="scaled_linear_beta", prediction_type=target)
            prob = DiffusionSegmentationInferer(sampler, steps, num_samples=4, seed=0)(x_test, net)
            scores.append(dice((prob > 0.5).float(), y_test))
        with torch.no_grad():
            anchor = (net.anchor(net.encode_condition(x_test)) > 0).float()
        print(f"{target:<14}{seconds:>9.1f}{scores[0]:>9.3f}{scores[1]:>9.3f}{dice(anchor, y_test):>8.3f}")


if __name__ == "__main__":
    main()
