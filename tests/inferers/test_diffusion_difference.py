# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""DiffusionDifferenceInferer: the difference map finds an inserted lesion (oracle pair and a short real training),
per-step outputs match the t set, fusion/uncertainty apply, and bad inputs give clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.engines import SupervisedEvaluator
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from skimage.filters import threshold_otsu

from monai_diffseg.data import synthetic_lesion_sample
from monai_diffseg.engines import ImageDiffusionPrepareBatch
from monai_diffseg.inferers import DIFFSEG_FIXED_THRESHOLD, DiffusionDifferenceInferer, grayscale, otsu_threshold
from monai_diffseg.metrics import compute_generalized_energy_distance, compute_sample_diversity
from monai_diffseg.networks.nets import DiffSegDenoiser, DiffSegPair
from monai_diffseg.transforms import (
    AmbiguousRegion,
    BorderFill,
    ConsistentRegion,
    DenseCRF,
    MeanEnsembleFusion,
    RandomSubsetFusion,
)


def _sched() -> DDPMScheduler:
    return DDPMScheduler(1000, schedule="linear_beta", prediction_type="sample")


def _data(n: int, size: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [synthetic_lesion_sample(np.random.default_rng([0, offset + i]), (size, size)) for i in range(n)]
    images = torch.as_tensor(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).float() / 255
    masks = torch.as_tensor(np.stack([s[1] for s in samples]))[:, None].float()
    return images, masks


def _dice(pred: torch.Tensor, gt: torch.Tensor) -> float:
    inter = (pred * gt).sum((1, 2, 3))
    return float((2 * inter / (pred.sum((1, 2, 3)) + gt.sum((1, 2, 3))).clamp_min(1e-6)).mean())


class _Identity(nn.Module):
    """Oracle lesion model: the lesion images are its data, it reconstructs x_0 = x_t (noise map 0)."""

    in_channels, spatial_dims = 3, 2

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


class _BorderSkin(nn.Module):
    """Oracle healthy model: returns the skin estimated from the image border (never sees a mask)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([BorderFill(0.15)(xi) for xi in x])


class _Times(nn.Module):
    """A network whose output is ``x_t`` times a factor of its timestep: ``factor[t] * x_t``."""

    in_channels, spatial_dims = 3, 2

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.factor[t].reshape(-1, *([1] * (x.ndim - 1))).to(x) * x


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_epsilon_and_v_outputs_are_read_as_x0(kind: str) -> None:
    """Output 0 and output x_t of an eps / v network are the x0 network of the closed forms: eps -> x0 = (x_t -
    sqrt(1 - a) eps) / sqrt(a), v -> x0 = sqrt(a) x_t - sqrt(1 - a) v (a = alphas_cumprod[t])."""
    images, _ = _data(2, 16)
    a = _sched().alphas_cumprod
    if kind == "epsilon":
        x0_of_zero, x0_of_x = 1 / a.sqrt(), (1 - (1 - a).sqrt()) / a.sqrt()
    else:
        x0_of_zero, x0_of_x = a.sqrt(), a.sqrt() - (1 - a).sqrt()
    scheduler = DDPMScheduler(1000, schedule="linear_beta", prediction_type=kind)
    out = DiffusionDifferenceInferer(scheduler).compute(images, DiffSegPair(_Times(0 * a), _Times(a**0)))
    ref = DiffusionDifferenceInferer(_sched()).compute(images, DiffSegPair(_Times(x0_of_zero), _Times(x0_of_x)))
    assert out["difference"].abs().max() > 0.1  # the two models differ
    torch.testing.assert_close(out["difference"], ref["difference"], atol=1e-5, rtol=1e-5)


def test_oracle_pair_highlights_the_lesion() -> None:
    images, masks = _data(6, 32)
    inferer = DiffusionDifferenceInferer(_sched(), threshold_method="otsu", smooth_sigma=1.0, seed=0)
    out = inferer.compute(images, DiffSegPair(_Identity(), _BorderSkin()))
    assert out["mask"].shape == out["score"].shape == out["difference"].shape == (6, 10, 1, 32, 32)
    assert out["threshold"].shape == (6, 10)
    fused = (out["mask"].mean(1) >= 0.5).float()
    chance = _dice(torch.ones_like(masks), masks)
    assert _dice(fused, masks) > max(0.7, chance + 0.3)
    # the lesion is where D is low: the healthy model brightens it
    d = out["difference"][:, 0]
    assert d[masks.bool()].mean() < d[~masks.bool()].mean()


def test_steps_stack_like_ensemble_members_and_are_seeded() -> None:
    images, masks = _data(2, 16)
    pair = DiffSegPair(_Identity(), _BorderSkin())
    inferer = DiffusionDifferenceInferer(_sched(), timesteps=(60, 90, 150), output="score", seed=3)
    scores = inferer(images, pair)
    assert scores.shape == (2, 3, 1, 16, 16) and 0 <= scores.min() and scores.max() <= 1
    # chunking the steps draws the same per-step noise; a separate healthy network is equivalent to the pair
    chunked = DiffusionDifferenceInferer(_sched(), (60, 90, 150), output="score", seed=3, step_batch_size=2)
    assert torch.allclose(chunked(images, pair), scores, atol=1e-5)
    split = DiffusionDifferenceInferer(_sched(), (60, 90, 150), output="score", seed=3, healthy_network=_BorderSkin())
    assert torch.allclose(split(images, _Identity()), scores, atol=1e-5)
    assert not torch.allclose(
        DiffusionDifferenceInferer(_sched(), (60, 90, 150), output="score", seed=4)(images, pair), scores
    )
    # the same x_t is used by both models: with two identical models the difference is -0.5 * G(n), n = x_t - x_t = 0
    same = DiffusionDifferenceInferer(_sched(), (60,)).compute(images, DiffSegPair(_Identity(), _Identity()))
    assert torch.count_nonzero(same["difference"]) == 0


def test_fusion_uncertainty_and_scores_apply_to_the_outputs() -> None:
    images, masks = _data(2, 32)
    masks_t = DiffusionDifferenceInferer(_sched(), threshold_method="otsu", smooth_sigma=1.0)(
        images, DiffSegPair(_Identity(), _BorderSkin())
    )
    per_case = masks_t[0]  # (T, 1, H, W) after decollation
    assert ConsistentRegion()(per_case).shape == AmbiguousRegion()(per_case).shape == (1, 32, 32)
    assert torch.equal(
        ConsistentRegion()(per_case) + AmbiguousRegion()(per_case) <= 1, torch.ones(1, 32, 32, dtype=torch.bool)
    )
    crf = DenseCRF(backend="torch")
    fusion = RandomSubsetFusion(num_rounds=3, subset_size=4, inner_fusion=lambda s, g: crf(MeanEnsembleFusion()(s), g))
    fusion.set_random_state(0)
    fused = fusion(per_case, guide=images[0])
    assert fused.shape == (1, 32, 32) and 0 <= fused.min() and fused.max() <= 1
    assert _dice((fused >= 0.5).float()[None], masks[:1]) > 0.6
    div = compute_sample_diversity(masks_t, distance="l2")  # DiffSeg's "GED"
    ged = compute_generalized_energy_distance(masks_t, masks[:, None])["ged"]
    assert div.shape == ged.shape == (2,) and (div >= 0).all() and torch.isfinite(ged).all()


def test_works_as_supervised_evaluator_inferer() -> None:
    images, _ = _data(2, 16)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=[{"image": images}], network=DiffSegPair(_Identity(), _BorderSkin()),
        inferer=DiffusionDifferenceInferer(_sched(), timesteps=(60, 100)), decollate=False,
    )  # fmt: skip
    evaluator.run()
    assert evaluator.state.output["pred"].shape == (2, 2, 1, 16, 16)


def test_bad_inputs_are_clear_errors() -> None:
    pair = DiffSegPair(DiffSegDenoiser(channels=(8, 16)), DiffSegDenoiser(channels=(8, 16)))
    with pytest.raises(ValueError, match=r"at least one noise step in \[0, 999\]"):
        DiffusionDifferenceInferer(_sched(), timesteps=[])
    with pytest.raises(ValueError, match=r"\[1000, 1500\].*\[0, 999\]"):
        DiffusionDifferenceInferer(_sched(), timesteps=[60, 1000, 1500])
    with pytest.raises(ValueError, match="RFlowScheduler has no alphas_cumprod"):
        DiffusionDifferenceInferer(RFlowScheduler(1000))
    with pytest.raises(ValueError, match="threshold_method='triangle'"):
        DiffusionDifferenceInferer(_sched(), threshold_method="triangle")
    with pytest.raises(ValueError, match=r"1 channel\(s\) \(grayscale\).*in_channels=3 \(RGB\); allowed: 3"):
        DiffusionDifferenceInferer(_sched())(torch.rand(1, 1, 16, 16), pair)
    with pytest.raises(ValueError, match=r"mixed sizes.*\(3, 16, 16\), \(3, 16, 24\)"):
        DiffusionDifferenceInferer(_sched())([torch.rand(3, 16, 16), torch.rand(3, 16, 24)], pair)
    with pytest.raises(ValueError, match="size_divisor=4"):
        DiffusionDifferenceInferer(_sched())(torch.rand(1, 3, 18, 16), pair)
    with pytest.raises(ValueError, match="needs two models"):
        DiffusionDifferenceInferer(_sched())(torch.rand(1, 3, 16, 16), pair.lesion)
    same = DiffusionDifferenceInferer(_sched(), (60,))([torch.rand(3, 16, 16), torch.rand(3, 16, 16)], pair)
    assert same.shape == (2, 1, 1, 16, 16)


def test_helpers() -> None:
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.allclose(grayscale(rgb)[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    assert torch.equal(grayscale(rgb[:, :1]), rgb[:, :1])
    g = torch.Generator().manual_seed(0)
    high = torch.stack([torch.randperm(100, generator=g) < k for k in (70, 40)])  # (2, 100) foreground of each map
    maps = torch.where(high, torch.tensor([[0.8], [0.6]]), torch.tensor([[0.2], [0.1]]))
    thr = otsu_threshold(maps.reshape(2, 10, 10))
    assert thr.shape == (2,)
    assert torch.equal(maps > thr[:, None], high)  # separates the two modes of each map, whatever their sizes
    assert thr.tolist() == [float(threshold_otsu(m.numpy())) for m in maps]  # skimage's threshold, map by map
    assert not (torch.full((1, 9), 0.3) > otsu_threshold(torch.full((1, 9), 0.3))).any()  # constant map: no foreground
    assert abs(DIFFSEG_FIXED_THRESHOLD - (1 - 180 / 306)) < 1e-9


@pytest.mark.slow
def test_short_real_training_finds_the_lesion() -> None:
    """Both DiffSeg models trained for seconds, without masks: the difference map beats chance by far."""
    torch.manual_seed(0)
    train, _ = _data(48, 32)
    test, test_masks = _data(12, 32, offset=100)
    sched = _sched()
    lesion = DiffSegDenoiser(channels=(16, 32, 64))
    opt = torch.optim.AdamW(lesion.parameters(), 2e-3)
    prepare = ImageDiffusionPrepareBatch(sched, timestep_range=(20, 300))
    for _ in range(100):
        x_t, target, _, kw = prepare({"image": train[torch.randint(0, len(train), (16,))]})
        loss = torch.nn.functional.mse_loss(lesion(x_t, **kw), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    healthy = copy.deepcopy(lesion)  # initialised from the lesion model
    opt = torch.optim.AdamW(healthy.parameters(), 2e-3)
    pseudo_healthy = torch.stack([BorderFill(0.15)(x) for x in train])  # no masks: border fills
    prepare = ImageDiffusionPrepareBatch(sched, timestep_range=(40, 200), target_key="healthy")
    for _ in range(100):
        idx = torch.randint(0, len(train), (16,))
        x_t, target, _, kw = prepare({"image": train[idx], "healthy": pseudo_healthy[idx]})
        loss = torch.nn.functional.mse_loss(healthy(x_t, **kw), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pair = DiffSegPair(lesion.eval(), healthy.eval())
    masks = DiffusionDifferenceInferer(sched, threshold_method="otsu", smooth_sigma=1.0)(test, pair)
    assert masks.shape == (12, 10, 1, 32, 32)
    chance = _dice(torch.ones_like(test_masks), test_masks)
    dice = _dice((masks.mean(1) >= 0.5).float(), test_masks)
    assert dice > chance + 0.2, f"DiffSeg Dice {dice:.3f} vs chance {chance:.3f}"
