# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Input checks at the inferers' API boundary: NaN/Inf named by batch item or file, num_samples, scheduler timesteps,
timesteps of the DiffSeg sweep, integer and float64 images, non-finite network outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.inferers import (
    DiffusionDifferenceInferer,
    DiffusionSegmentationInferer,
    DiffusionSlidingWindowInferer,
)
from monai_diffseg.networks.nets import DiffSegDenoiser, DiffSegPair
from monai_diffseg.networks.nets.medsegdiff import MedSegDiff

SIZE = (16, 16)


@pytest.fixture(scope="module")
def net() -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=8, num_head_channels=8).eval()


@pytest.fixture(scope="module")
def pair() -> DiffSegPair:
    torch.manual_seed(0)
    return DiffSegPair(DiffSegDenoiser(channels=(8, 16)), DiffSegDenoiser(channels=(8, 16))).eval()


def _sampler(**kwargs) -> DiffusionSegmentationInferer:
    return DiffusionSegmentationInferer(DDIMScheduler(num_train_timesteps=1000), 2, num_samples=2, seed=0, **kwargs)


def _diffseg(**kwargs) -> DiffusionDifferenceInferer:
    return DiffusionDifferenceInferer(DDPMScheduler(1000, prediction_type="sample"), timesteps=(60, 90), **kwargs)


def _images(n: int = 3, bad: int | None = None) -> torch.Tensor:
    image = torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    if bad is not None:
        image[bad, 1, 2, 2] = float("nan")
    return image


def _named(image: torch.Tensor) -> MetaTensor:
    out = MetaTensor(image)
    out.meta["filename_or_obj"] = [f"case_{i}.png" for i in range(image.shape[0])]
    out.is_batch = True
    return out


def test_sampler_non_finite_image_names_item_and_file(net: MedSegDiff) -> None:
    with pytest.raises(ValueError, match=r"DiffusionSegmentationInferer: inputs .*batch item\(s\) \[2\] of 3"):
        _sampler()(_images(bad=2), net)
    with pytest.raises(ValueError, match=r"\[1\] \(case_1.png\) of 3"):
        _sampler()(_named(_images(bad=1)), net)
    window = DiffusionSlidingWindowInferer(
        DDIMScheduler(num_train_timesteps=1000), roi_size=SIZE, num_inference_steps=2
    )
    with pytest.raises(ValueError, match=r"DiffusionSlidingWindowInferer: inputs .*\[0\] \(case_0.png\) of 3"):
        window(_named(_images(bad=0)), net)


def test_sampler_num_samples(net: MedSegDiff) -> None:
    for inferer in (
        _sampler(),
        DiffusionSlidingWindowInferer(DDIMScheduler(num_train_timesteps=1000), roi_size=SIZE, num_inference_steps=2),
    ):
        for bad in (0, -1):
            with pytest.raises(ValueError, match=rf"sample: num_samples must be >= 1, got {bad}; pass None"):
                inferer.sample(_images(1), net, num_samples=bad)
    assert _sampler().sample(_images(1), net, num_samples=None).shape[1] == 2  # the inferer's default
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        DiffusionSegmentationInferer(DDIMScheduler(num_train_timesteps=1000), num_samples=0)


def test_sampler_dtypes(net: MedSegDiff) -> None:
    image = _images(2)
    ref = _sampler()(image, net)
    assert torch.allclose(_sampler()(image.double(), net), ref, atol=1e-5)  # float64 cast to float32
    with pytest.raises(TypeError, match=r"inputs has dtype torch.uint8.*ScaleIntensityd"):
        _sampler()((image * 255).to(torch.uint8), net)


class _OffsetScheduler(DDIMScheduler):
    """A (broken) custom scheduler whose timesteps run past the training schedule."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        self.timesteps = self.timesteps + 600


def test_sampler_checks_scheduler_timesteps(net: MedSegDiff) -> None:
    inferer = DiffusionSegmentationInferer(_OffsetScheduler(num_train_timesteps=1000), 4, num_samples=1)
    with pytest.raises(
        ValueError, match=r"_OffsetScheduler.timesteps .*in \[0, 999\].*got \[1599, 1266\] at index\(es\) \[0, 1\]"
    ):
        inferer(_images(1), net)


class _Exploding(nn.Module):
    """A denoiser without input checks whose output overflows for image 1."""

    out_channels = 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        scale = torch.ones(x.shape[0], 1, 1, 1)
        scale[1::2] = float("nan")  # image 1 of every member (N = 2, member-major rows)
        return x * scale


def test_sampler_names_images_whose_samples_are_not_finite() -> None:
    with pytest.raises(ValueError, match=r"the sampled masks .*batch item\(s\) \[1\] of 2; the inputs were finite"):
        _sampler()(_images(2), _Exploding())


def test_diffseg_non_finite_image_names_item_and_file(pair: DiffSegPair) -> None:
    with pytest.raises(ValueError, match=r"DiffusionDifferenceInferer: inputs .*batch item\(s\) \[2\] of 3"):
        _diffseg()(_images(bad=2), pair)
    with pytest.raises(ValueError, match=r"\[0\] \(case_0.png\) of 3"):
        _diffseg()(_named(_images(bad=0)), pair)
    # a list of MetaTensor images (one file each)
    items = [MetaTensor(i, meta={"filename_or_obj": f"img{k}.jpg"}) for k, i in enumerate(_images(bad=1))]
    with pytest.raises(ValueError, match=r"\[1\] \(img1.jpg\) of 3"):
        _diffseg()(items, pair)


def test_diffseg_timesteps_outside_schedule() -> None:
    for bad in ([-1], [60, 5000]):
        with pytest.raises(ValueError, match=r"outside the scheduler's range \[0, 999\]"):
            DiffusionDifferenceInferer(DDPMScheduler(1000, prediction_type="sample"), timesteps=bad)


def test_diffseg_dtype_rule(pair: DiffSegPair) -> None:
    image = (_images(2) * 255).round()
    ref = _diffseg(output="score")(image / 255, pair)
    # an integer image is used when its values lie in value_range, mapped by value_range like a float image
    raw = _diffseg(output="score", value_range=(0, 255))(image.to(torch.uint8), pair)
    assert torch.allclose(raw, ref, atol=1e-5)
    # uint8 0-255 with the default value_range (0, 1) would be a silent error: it raises, saying what to do
    with pytest.raises(TypeError, match=r"dtype torch.uint8 with values in \[\d+, 255\] but value_range=\(0.0, 1.0\)"):
        _diffseg()(image.to(torch.uint8), pair)
    assert torch.allclose(_diffseg(output="score")((image / 255).double(), pair), ref, atol=1e-5)


class _NaNHealthy(nn.Module):
    in_channels, spatial_dims = 3, 2

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan"))


def test_diffseg_names_images_whose_difference_is_not_finite(pair: DiffSegPair) -> None:
    inferer = _diffseg(healthy_network=_NaNHealthy())
    with pytest.raises(ValueError, match=r"the difference maps .*batch item\(s\) \[0, 1\] of 2.*check the checkpoints"):
        inferer(_images(2), pair.lesion)
