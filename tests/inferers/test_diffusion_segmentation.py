# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.inferers.diffusion_segmentation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler, RFlowScheduler

from monai_diffseg.inferers.diffusion_segmentation import (
    DiffusionSegmentationInferer,
    DiffusionSegmentationTrainInferer,
    x0_to_probability,
)
from monai_diffseg.networks.nets.medsegdiff import MedSegDiff
from monai_diffseg.schedulers import DPMSolverMultistepScheduler

SIZE = (16, 16)


def _net(out_channels: int = 1, anchor_head: bool = True) -> MedSegDiff:
    torch.manual_seed(0)
    net = MedSegDiff(
        2,
        3,
        out_channels,
        channels=(8, 16),
        cond_channels=(8, 16),
        norm_num_groups=8,
        num_head_channels=8,
        anchor_head=anchor_head,
    )
    return net.eval()


@pytest.fixture(scope="module")
def net() -> MedSegDiff:
    return _net()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))


def _ddim(steps: int = 4) -> tuple[DDIMScheduler, int]:
    return DDIMScheduler(num_train_timesteps=1000), steps


class PlainDenoiser(nn.Module):
    """A denoiser without ``encode_condition``: called as ``(x, t, image=...)`` with the image tiled per member."""

    out_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1 + 3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        assert image is not None and image.shape[0] == x.shape[0]
        return self.conv(torch.cat([x, image], 1)) * (t.float()[:, None, None, None] / 1000)


def test_output_shapes_and_range(net: MedSegDiff, image: torch.Tensor) -> None:
    scheduler, steps = _ddim()
    fused = DiffusionSegmentationInferer(scheduler, steps, num_samples=3, seed=0)(image, net)
    samples = DiffusionSegmentationInferer(scheduler, steps, num_samples=3, seed=0, return_samples=True)(image, net)
    assert fused.shape == (2, 1, *SIZE)
    assert samples.shape == (2, 3, 1, *SIZE)
    for out in (fused, samples):
        assert out.dtype == torch.float32 and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.allclose(fused, samples.mean(1), atol=1e-6)


@pytest.mark.parametrize(
    "scheduler,steps,eta,member_batch_size",
    [
        (DDIMScheduler(num_train_timesteps=1000), 4, 0.0, None),
        (DDIMScheduler(num_train_timesteps=1000), 4, 0.7, None),
        (DDPMScheduler(num_train_timesteps=50), 50, 0.0, None),
        (DDIMScheduler(num_train_timesteps=1000), 4, 0.0, 2),
        (DDIMScheduler(num_train_timesteps=1000), 4, 0.7, 2),
    ],
    ids=["ddim", "ddim-eta", "ddpm", "ddim-chunked", "ddim-eta-chunked"],
)
def test_batched_ensemble_equals_looped(
    net: MedSegDiff, image: torch.Tensor, scheduler: Any, steps: int, eta: float, member_batch_size: int | None
) -> None:
    members, seed = 3, 11
    inferer = DiffusionSegmentationInferer(
        scheduler, steps, eta=eta, member_batch_size=member_batch_size, return_samples=True
    )
    batched = inferer(image, net, num_samples=members, seed=seed)
    looped = torch.cat([inferer(image, net, num_samples=1, seed=seed + e) for e in range(members)], dim=1)
    assert batched.shape == looped.shape == (2, members, 1, *SIZE)
    assert torch.allclose(batched, looped, atol=1e-5)
    # members really differ from each other (independent noise)
    assert not torch.allclose(batched[:, 0], batched[:, 1], atol=1e-3)


def test_seed_reproducible_and_different(net: MedSegDiff, image: torch.Tensor) -> None:
    inferer = DiffusionSegmentationInferer(DDIMScheduler(num_train_timesteps=1000), 3, num_samples=2, eta=0.5)
    a = inferer(image, net, seed=5)
    b = inferer(image, net, seed=5)
    c = inferer(image, net, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)
    # seed=None draws from torch's global RNG: reproducible with torch.manual_seed
    torch.manual_seed(0)
    d = inferer(image, net)
    torch.manual_seed(0)
    e = inferer(image, net)
    assert torch.equal(d, e)


def test_encode_condition_called_once(net: MedSegDiff, image: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = net.encode_condition

    def counting(img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(img.shape)
        return original(img)

    monkeypatch.setattr(net, "encode_condition", counting)
    inferer = DiffusionSegmentationInferer(
        DDIMScheduler(num_train_timesteps=1000), 4, num_samples=3, member_batch_size=2
    )
    inferer(image, net, seed=0)
    assert calls == [image.shape]  # once per call, with the un-tiled image batch


def test_no_grad_and_autocast(net: MedSegDiff, image: torch.Tensor) -> None:
    inferer = DiffusionSegmentationInferer(DDIMScheduler(num_train_timesteps=1000), 3, num_samples=2, seed=0)
    with torch.no_grad():
        ref = inferer(image, net)
    assert not ref.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = inferer(image, net)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.shape == ref.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_metatensor_keeps_affine(net: MedSegDiff, image: torch.Tensor) -> None:
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.0, 1.0], dtype=torch.float64))
    meta_image = MetaTensor(image, affine=affine, meta={"filename_or_obj": "case_1.png"})
    out = DiffusionSegmentationInferer(DDIMScheduler(num_train_timesteps=1000), 2, num_samples=2, seed=0)(
        meta_image, net
    )
    assert isinstance(out, MetaTensor)
    assert torch.allclose(out.affine.double(), affine)
    assert out.meta["filename_or_obj"] == "case_1.png"
    assert out.shape == (2, 1, *SIZE)


def test_multiclass_probabilities_sum_to_one(image: torch.Tensor) -> None:
    net3 = _net(out_channels=3)
    inferer = DiffusionSegmentationInferer(
        DDIMScheduler(num_train_timesteps=1000), 3, num_samples=2, seed=0, return_samples=True
    )
    samples = inferer(image, net3)
    assert samples.shape == (2, 2, 3, *SIZE)
    assert torch.allclose(samples.sum(2), torch.ones(2, 2, *SIZE), atol=1e-5)
    inferer.return_samples = False
    fused = inferer(image, net3)
    assert torch.allclose(fused.sum(1), torch.ones(2, *SIZE), atol=1e-5)


def test_x0_to_probability() -> None:
    x0 = torch.tensor([[[-1.0, 0.0, 1.0, 3.0, -5.0]]])
    assert torch.allclose(x0_to_probability(x0), torch.tensor([[[0.0, 0.5, 1.0, 1.0, 0.0]]]))
    multi = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-1.0, 1.0]])[None]  # (1, C=3, 2)
    prob = x0_to_probability(multi)
    assert torch.allclose(prob.sum(1), torch.ones(1, 2))


def test_x0_to_probability_all_background_channels() -> None:
    # every one-hot channel predicted at (or below) -1: the renormalisation divides 0 by the 1e-6 clamp
    prob = x0_to_probability(torch.full((1, 3, 2), -1.0))
    assert torch.allclose(prob.sum(1), torch.ones(1, 2))


def test_network_without_encode_condition(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    plain = PlainDenoiser().eval()
    inferer = DiffusionSegmentationInferer(
        DDIMScheduler(num_train_timesteps=1000), 3, num_samples=3, seed=1, member_batch_size=2, return_samples=True
    )
    out = inferer(image, plain)
    assert out.shape == (2, 3, 1, *SIZE) and float(out.min()) >= 0 and float(out.max()) <= 1
    looped = torch.cat([inferer(image, plain, num_samples=1, seed=1 + e) for e in range(3)], dim=1)
    assert torch.allclose(out, looped, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"num_samples": 0}, {"num_inference_steps": 0}, {"member_batch_size": 0}, {"member_batch_size": -2}]
)
def test_invalid_args(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DiffusionSegmentationInferer(DDIMScheduler(num_train_timesteps=1000), **kwargs)


def test_train_inferer(net: MedSegDiff, image: torch.Tensor) -> None:
    x_t, t = torch.randn(2, 1, *SIZE), torch.tensor([5, 50])
    out = DiffusionSegmentationTrainInferer()(x_t, net, timesteps=t, image=image)
    assert set(out) == {"pred", "anchor"}
    assert out["pred"].shape == (2, 1, *SIZE) and out["anchor"].shape == (2, 1, *SIZE)
    assert set(DiffusionSegmentationTrainInferer(anchor=False)(x_t, net, timesteps=t, image=image)) == {"pred"}
    no_anchor = _net(anchor_head=False)
    assert set(DiffusionSegmentationTrainInferer()(x_t, no_anchor, timesteps=t, image=image)) == {"pred"}
    # a DataParallel-style wrapper is looked through for the anchor head
    wrapped = nn.DataParallel(net)
    assert set(DiffusionSegmentationTrainInferer()(x_t, wrapped, timesteps=t, image=image)) == {"pred", "anchor"}
    with pytest.raises(ValueError, match="timesteps"):
        DiffusionSegmentationTrainInferer()(x_t, net, image=image)
    with pytest.raises(ValueError, match="image"):
        DiffusionSegmentationTrainInferer()(x_t, net, timesteps=t)


class OracleDenoiser(nn.Module):
    """What a perfect model of the mask ``target`` ``(1, 1, *S)`` predicts for the scheduler: ``x_0``, the noise, or
    RFlow's velocity ``x_0 - noise`` (with ``x_t = (1 - t / T) x_0 + t / T noise``)."""

    out_channels = 1

    def __init__(self, scheduler: Any, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target
        self.__dict__["scheduler"] = scheduler  # not a submodule (MONAI's RFlowScheduler skips Module.__init__)

    def forward(self, x: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        x0 = self.target.expand_as(x)
        if isinstance(self.scheduler, RFlowScheduler):
            return (x0 - x) / (t.float() / self.scheduler.num_train_timesteps).reshape(-1, 1, 1, 1)
        if self.scheduler.prediction_type == "sample":
            return x0
        a = self.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


@pytest.mark.parametrize(
    "scheduler,steps",
    [
        (DDPMScheduler(num_train_timesteps=50, prediction_type="sample"), 50),
        (DDIMScheduler(num_train_timesteps=1000), 5),
        (RFlowScheduler(num_train_timesteps=1000), 5),
        (DPMSolverMultistepScheduler(num_train_timesteps=1000), 5),
    ],
    ids=["ddpm", "ddim", "rflow", "dpm-solver"],
)
def test_schedulers_recover_the_oracle_mask(image: torch.Tensor, scheduler: Any, steps: int) -> None:
    target = (torch.rand(1, 1, *SIZE, generator=torch.Generator().manual_seed(0)) > 0.5).float() * 2 - 1
    out = DiffusionSegmentationInferer(scheduler, steps, num_samples=2, seed=0)(
        image, OracleDenoiser(scheduler, target)
    )
    assert torch.allclose(out, x0_to_probability(target).expand(2, 1, *SIZE), atol=1e-4)


@pytest.mark.parametrize("skip_prk_steps", [False, True], ids=["pndm", "pndm-plms"])
def test_pndm_equals_a_plain_scheduler_loop(image: torch.Tensor, skip_prk_steps: bool) -> None:
    """PNDM (stateful, no x_0 prediction: the last sample is the output) as MONAI's ``DiffusionInferer`` loops it."""
    scheduler = PNDMScheduler(num_train_timesteps=1000, skip_prk_steps=skip_prk_steps)
    net = OracleDenoiser(scheduler, torch.zeros(1, 1, *SIZE))
    out = DiffusionSegmentationInferer(scheduler, 5, num_samples=2, seed=4, return_samples=True)(image, net)
    loop = copy.deepcopy(scheduler)
    loop.set_timesteps(5)
    # every image's member e starts from the noise of seed + e (row_generators)
    noise = [torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(4 + e)) for e in range(2)]
    x = torch.cat([n.repeat(2, 1, 1, 1) for n in noise])
    for t in loop.timesteps:
        x, _ = loop.step(net(x, t.repeat(x.shape[0])), int(t), x)
    assert torch.allclose(out, x0_to_probability(x.reshape(2, 2, 1, *SIZE).transpose(0, 1), channel_dim=2), atol=1e-5)


def test_rflow_steps_to_the_next_timestep(image: torch.Tensor) -> None:
    """A constant velocity ``c`` moves the noise ``x_T`` to ``x_0 = x_T + c`` over the whole schedule only when every
    step is ``(t - next_t) / T`` long: with the timestep transform the steps are not ``1 / num_inference_steps``."""
    scheduler = RFlowScheduler(1000, use_timestep_transform=True, base_img_size_numel=64 * 64, spatial_dim=2)
    inferer = DiffusionSegmentationInferer(scheduler, 6, num_samples=2, seed=3, return_samples=True)
    out = inferer(image, lambda x, t, **kwargs: torch.full_like(x, 0.4))
    noise = [torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(3 + e)) for e in range(2)]
    noise = [n.expand(2, 1, *SIZE) for n in noise]  # every image's member e starts from seed + e
    assert torch.allclose(out, x0_to_probability(torch.stack(noise, 1) + 0.4, channel_dim=2), atol=1e-5)


class _GuidedScheduler(DDIMScheduler):
    """A scheduler whose step needs an argument the sampler cannot know."""

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, guidance: float) -> Any:
        return super().step(model_output, timestep, sample)


def test_scheduler_with_unknown_step_arguments_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"_GuidedScheduler.step requires \['guidance'\].*passes only"):
        DiffusionSegmentationInferer(_GuidedScheduler(num_train_timesteps=1000))
