# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Self-conditioning (Analog Bits, arXiv:2208.04202): MedSegDiff option, training pass and sampler wiring."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.inferers.diffusion_segmentation import (
    DiffusionSegmentationInferer,
    DiffusionSegmentationTrainInferer,
    prediction_to_x0,
)
from monai_diffseg.networks.nets.medsegdiff import MedSegDiff

SIZE = (16, 16)


def _net(self_condition: bool = True, out_channels: int = 1) -> MedSegDiff:
    torch.manual_seed(0)
    net = MedSegDiff(
        2, 3, out_channels, channels=(8, 16), cond_channels=(8, 16), num_head_channels=8, self_condition=self_condition
    )
    return net.eval()


def test_network_option_shapes_and_zeros_default() -> None:
    net = _net()
    assert net.in_conv.conv.in_channels == 2  # [x_t, x_self_cond]
    x, t, img = torch.randn(2, 1, *SIZE), torch.tensor([3, 500]), torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        none = net(x, t, img)
        zeros = net(x, t, img, x_self_cond=torch.zeros_like(x))
        other = net(x, t, img, x_self_cond=torch.ones_like(x))
    assert torch.equal(none, zeros)
    assert not torch.allclose(zeros, other)  # the self-condition reaches the output
    with pytest.raises(ValueError, match="x_self_cond"):
        net(x, t, img, x_self_cond=torch.zeros(2, 1, 8, 8))


def test_off_keeps_old_layout_and_rejects_self_condition() -> None:
    old = _net(self_condition=False)
    assert old.in_conv.conv.in_channels == 1
    _net(self_condition=False).load_state_dict(old.state_dict())  # strict: unchanged state-dict layout
    with pytest.raises(RuntimeError, match="size mismatch"):
        _net(self_condition=True).load_state_dict(old.state_dict())
    x = torch.randn(1, 1, *SIZE)
    with pytest.raises(ValueError, match="self_condition=False"):
        old(x, torch.tensor([1]), torch.randn(1, 3, *SIZE), x_self_cond=x)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_prediction_to_x0_inverts_the_target(kind: str) -> None:
    sched = DDPMScheduler(1000, schedule="scaled_linear_beta", prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 400, 999])
    x_t = sched.add_noise(x0, noise, t)
    target = {"epsilon": noise, "sample": x0, "v_prediction": sched.get_velocity(x0, noise, t)}[kind]
    assert torch.allclose(prediction_to_x0(target, x_t, t, sched, clip=False), x0, atol=1e-3)
    assert prediction_to_x0(target * 5, x_t, t, sched).abs().max() <= 1.0  # clipped to the mask range


class _Recorder(nn.Module):
    """A self-conditioned stand-in: output = a * x_t + b * x_self_cond; records each call's self-condition."""

    self_condition = True
    out_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.b = nn.Parameter(torch.tensor(2.0))
        self.seen: list[Any] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, image: Any = None, x_self_cond: Any = None) -> Any:
        self.seen.append(None if x_self_cond is None else x_self_cond.detach().clone())
        sc = torch.zeros_like(x) if x_self_cond is None else x_self_cond
        return self.a * x + self.b * sc


@pytest.mark.parametrize("probability,expected_calls", [(1.0, 2), (0.0, 1)])
def test_train_inferer_feeds_detached_x0_estimate(probability: float, expected_calls: int) -> None:
    sched = DDPMScheduler(1000, prediction_type="epsilon")
    net = _Recorder()
    inferer = DiffusionSegmentationTrainInferer(anchor=False, scheduler=sched, self_condition_probability=probability)
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([10, 900])
    out = inferer(x, net, timesteps=t, image=torch.zeros(2, 3, 4, 4))["pred"]
    assert len(net.seen) == expected_calls
    if probability == 1.0:
        assert net.seen[0] is None  # the first (no-grad) pass has no self-condition
        x0_hat = prediction_to_x0(0.5 * x, x, t, sched)
        assert torch.allclose(net.seen[1], x0_hat)
        assert torch.allclose(out, 0.5 * x + 2.0 * x0_hat)
        out.sum().backward()  # the self-condition is detached: gradients reach b only through the trained pass
        assert torch.allclose(net.b.grad, x0_hat.sum())
    else:
        assert net.seen == [None]


def test_train_inferer_needs_scheduler_and_valid_probability() -> None:
    with pytest.raises(ValueError, match="scheduler"):
        DiffusionSegmentationTrainInferer()(torch.zeros(1, 1, 4, 4), _Recorder(), timesteps=torch.tensor([1]), image=0)
    with pytest.raises(ValueError, match="self_condition_probability"):
        DiffusionSegmentationTrainInferer(self_condition_probability=1.5)


def test_sampler_passes_previous_x0_zeros_first() -> None:
    net = _Recorder()
    sched = DDIMScheduler(1000, prediction_type="sample", clip_sample=True)
    inferer = DiffusionSegmentationInferer(sched, num_inference_steps=4, num_samples=3, seed=0)
    with torch.no_grad():
        inferer.sample(torch.zeros(1, 3, 4, 4), net)
    assert len(net.seen) == 4 and torch.equal(net.seen[0], torch.zeros(3, 1, 4, 4))
    # sample-prediction DDIM: each step's x0 estimate is the clipped network output, the next step's self-condition
    ref = DDIMScheduler(1000, prediction_type="sample", clip_sample=True)
    ref.set_timesteps(4)
    x = torch.cat([torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(e)) for e in range(3)])
    sc = torch.zeros_like(x)
    for k, t in enumerate(ref.timesteps.tolist()):
        assert torch.allclose(net.seen[k], sc, atol=1e-6)
        x, sc = ref.step(0.5 * x + 2.0 * sc, t, x)


def test_sampler_self_condition_matches_manual_loop_and_chunking() -> None:
    net = _net()
    sched = DDIMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    image = torch.randn(2, 3, *SIZE)
    full = DiffusionSegmentationInferer(sched, num_inference_steps=3, num_samples=3, seed=7, return_samples=True)
    chunked = DiffusionSegmentationInferer(
        sched, num_inference_steps=3, num_samples=3, seed=7, return_samples=True, member_batch_size=2
    )
    a, b = full(image, net), chunked(image, net)
    assert a.shape == (2, 3, 1, *SIZE) and torch.allclose(a, b, atol=1e-5)
    # manual loop (one image: member e starts from the generator seeded 7 + e), previous x0 as self-condition
    s = DDIMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    s.set_timesteps(3)
    x = torch.cat([torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(7 + e)) for e in range(3)])
    x0 = torch.zeros_like(x)
    with torch.no_grad():
        cond = net.encode_condition(image[:1])
        for t in s.timesteps.tolist():
            out = net(x, torch.full((3,), t), condition=cond, x_self_cond=x0)
            x, x0 = s.step(out, t, x)
    manual = ((x0.clamp(-1, 1) + 1) / 2).reshape(3, 1, 1, *SIZE).transpose(0, 1)
    assert torch.allclose(full(image[:1], net), manual, atol=1e-5)
    # without the self-condition wiring (zeros at every step) the result differs
    with torch.no_grad():
        x = torch.cat([torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(7 + e)) for e in range(3)])
        for t in s.timesteps.tolist():
            x, x0 = s.step(net(x, torch.full((3,), t), condition=cond), t, x)
    assert not torch.allclose(manual, ((x0.clamp(-1, 1) + 1) / 2).reshape(3, 1, 1, *SIZE).transpose(0, 1), atol=1e-3)
