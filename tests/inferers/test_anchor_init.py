# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Anchor-initialised (SDEdit-style) sampling and the anchor prior of DiffusionSegmentationInferer (issue 16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from monai_diffseg.inferers import DiffusionSegmentationInferer, DiffusionSlidingWindowInferer
from monai_diffseg.networks.nets import MedSegDiff


class AnchorNet(nn.Module):
    """A stand-in MedSegDiff: fixed anchor logits, an x0 prediction ``tanh(2 x_t)``; records every call."""

    def __init__(self, logits: torch.Tensor, anchor_head: bool = True) -> None:
        super().__init__()
        self.logits = logits  # (N, C, *S)
        self.out_channels = logits.shape[1]
        self.anchor_head = nn.Identity() if anchor_head else None
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode_condition(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (image.mean(dim=1, keepdim=True),)

    def anchor(self, condition: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.logits.to(condition[0].device)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: tuple | None = None) -> torch.Tensor:
        self.calls.append((x_t.clone(), timesteps.clone()))
        return torch.tanh(2.0 * x_t)


def _ddim() -> DDIMScheduler:
    return DDIMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")


def _inferer(**kwargs) -> DiffusionSegmentationInferer:
    opts = {"num_inference_steps": 20, "num_samples": 3, "seed": 7, "return_samples": True, **kwargs}
    return DiffusionSegmentationInferer(_ddim(), **opts)


def test_anchor_start_is_the_noised_anchor_and_runs_only_the_remaining_steps():
    n, c, s = 2, 1, 8
    logits = torch.linspace(-3, 3, n * c * s * s).reshape(n, c, s, s)
    net = AnchorNet(logits)
    image = torch.rand(n, 3, s, s)
    _inferer(init="anchor", t_start=500)(image, net)

    grid = [999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210, 158, 105, 53, 0]
    assert [int(t[0]) for _, t in net.calls] == [t for t in grid if t <= 500]  # 10 network evaluations, from 473
    first_x, first_t = net.calls[0]
    assert torch.all(first_t == 473)
    # member e of image i: sqrt(a) (2 sigmoid(logit) - 1) + sqrt(1 - a) * noise of the generator seeded 7 + e
    a = _ddim().alphas_cumprod[473]
    x0 = 2 * torch.sigmoid(logits) - 1
    for e in range(3):
        for i in range(n):
            noise = torch.randn((1, c, s, s), generator=torch.Generator().manual_seed(7 + e))[0]
            expected = a.sqrt() * x0[i] + (1 - a).sqrt() * noise
            torch.testing.assert_close(first_x[e * n + i], expected, rtol=1e-5, atol=1e-5)


def test_grid_without_a_timestep_below_t_start_takes_one_step_from_t_start():
    net = AnchorNet(torch.randn(1, 1, 8, 8))
    _inferer(init="anchor", t_start=263, num_inference_steps=1)(torch.rand(1, 3, 8, 8), net)  # grid [999]
    assert [int(t[0]) for _, t in net.calls] == [263]


def test_small_t_start_keeps_the_anchor_and_members_differ_by_their_noise():
    logits = torch.full((1, 1, 8, 8), 4.0)
    logits[..., :4] = -4.0  # left half background, right half foreground
    probs = _inferer(init="anchor", t_start=60, num_samples=2)(torch.rand(1, 3, 8, 8), AnchorNet(logits))
    # the stand-in predicts x0 = tanh(2 x_t) (fixed points +-0.96): started near the anchor, the masks keep its sides
    assert torch.all(probs[0, :, 0, :, 4:] > 0.8) and torch.all(probs[0, :, 0, :, :4] < 0.2)
    assert not torch.allclose(probs[0, 0], probs[0, 1])


def test_batched_members_equal_single_member_calls():
    logits = torch.randn(2, 1, 8, 8)
    image = torch.rand(2, 3, 8, 8)
    both = _inferer(init="anchor", t_start=300, num_samples=3)(image, AnchorNet(logits))
    for e in range(3):
        one = _inferer(init="anchor", t_start=300, num_samples=1, seed=7 + e)(image, AnchorNet(logits))
        torch.testing.assert_close(both[:, e], one[:, 0])


def test_anchor_weight_blends_every_member_with_the_anchor_probability():
    logits = torch.randn(2, 1, 8, 8)
    image = torch.rand(2, 3, 8, 8)
    plain = _inferer(num_samples=2)(image, AnchorNet(logits))
    prior = _inferer(num_samples=2, anchor_weight=0.25)(image, AnchorNet(logits))
    expected = 0.75 * plain + 0.25 * torch.sigmoid(logits)[:, None]
    torch.testing.assert_close(prior, expected)
    only = _inferer(num_samples=2, anchor_weight=1.0)(image, AnchorNet(logits))
    torch.testing.assert_close(only, torch.sigmoid(logits)[:, None].expand_as(only))


@pytest.mark.parametrize("multi_label", [False, True])
def test_anchor_probability_softmax_for_classes_sigmoid_for_multi_label(multi_label):
    logits = torch.randn(1, 2, 8, 8) * 3
    net = AnchorNet(logits)
    _inferer(init="anchor", t_start=0, num_samples=1, multi_label=multi_label)(torch.rand(1, 3, 8, 8), net)
    x_start = net.calls[0][0]
    a = _ddim().alphas_cumprod[0]
    noise = torch.randn((1, 2, 8, 8), generator=torch.Generator().manual_seed(7))
    p = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
    torch.testing.assert_close(x_start, a.sqrt() * (2 * p - 1) + (1 - a).sqrt() * noise, rtol=1e-5, atol=1e-5)


def test_default_is_the_unchanged_full_reverse_process():
    net = AnchorNet(torch.randn(1, 1, 8, 8))
    image = torch.rand(1, 3, 8, 8)
    old = _inferer(num_samples=2)(image, net)
    assert len(net.calls) == 20
    first = net.calls[0][0]
    noise = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first[:1], noise)  # pure noise, not the anchor
    torch.testing.assert_close(_inferer(num_samples=2, init="noise", anchor_weight=0.0)(image, net), old)


def test_ddpm_anchor_start_and_sliding_window_agree_with_one_window():
    net = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), num_res_blocks=1, norm_num_groups=4).eval()
    image = torch.rand(1, 3, 16, 16)
    ddpm = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    opts = {"num_inference_steps": 10, "num_samples": 2, "seed": 3, "init": "anchor", "t_start": 250}
    whole = DiffusionSegmentationInferer(ddpm, return_samples=True, **opts)(image, net)
    windowed = DiffusionSlidingWindowInferer(ddpm, roi_size=(16, 16), return_samples=True, **opts)(image, net)
    torch.testing.assert_close(windowed, whole, rtol=1e-4, atol=1e-5)
    # with a real anchor head the start moves the masks: not the pure-noise result
    noise_start = DiffusionSegmentationInferer(ddpm, return_samples=True, **{**opts, "init": "noise"})(image, net)
    assert not torch.allclose(whole, noise_start)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="t_start"):
        _inferer(init="anchor")
    with pytest.raises(ValueError, match="DDIMScheduler or DDPMScheduler"):
        DiffusionSegmentationInferer(PNDMScheduler(1000), init="anchor", t_start=400)
    with pytest.raises(ValueError, match="anchor_weight"):
        _inferer(anchor_weight=1.5)
    with pytest.raises(ValueError):
        _inferer(init="sdedit", t_start=10)
    with pytest.raises(ValueError, match="anchor head"):
        _inferer(init="anchor", t_start=400)(torch.rand(1, 3, 8, 8), AnchorNet(torch.zeros(1, 1, 8, 8), False))
