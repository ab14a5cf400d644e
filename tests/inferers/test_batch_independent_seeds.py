# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""An image's samples depend on the image and the seed only: not on its batch, its position there, the batch size
or (therefore) the rank of a sharded run. What makes sharded/batched dataset-scale inference equal a plain run."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.inferers import DiffusionDifferenceInferer, DiffusionSegmentationInferer
from monai_diffseg.inferers.diffusion_segmentation import DiffusionSlidingWindowInferer, row_generators
from monai_diffseg.networks.nets import DiffSegPair, MedSegDiff

SIZE = (16, 16)


@pytest.fixture(scope="module")
def net() -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=8, num_head_channels=8).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(7))


def test_row_generators_order_and_checks() -> None:
    gens = row_generators([10, 20], n=2, members=3)
    assert len(gens) == 6
    firsts = [float(torch.randn(1, generator=g)) for g in gens]
    # member-major rows e * n + i, seeded seed_i + e
    expected = [
        float(torch.randn(1, generator=torch.Generator().manual_seed(s + e))) for e in range(3) for s in (10, 20)
    ]
    assert firsts == expected
    with pytest.raises(ValueError, match="3 seeds given for a batch of 2"):
        row_generators([1, 2, 3], n=2, members=1)


@pytest.mark.parametrize(
    "scheduler, steps, eta",
    [
        (DDIMScheduler(num_train_timesteps=1000), 3, 0.0),
        (DDIMScheduler(num_train_timesteps=1000), 3, 0.5),
        (DDPMScheduler(num_train_timesteps=4), 4, 0.0),  # a short DDPM schedule keeps the test fast
    ],
    ids=["ddim", "ddim-eta", "ddpm"],
)
def test_samples_do_not_depend_on_the_batch(
    net: MedSegDiff, images: torch.Tensor, scheduler: DDIMScheduler | DDPMScheduler, steps: int, eta: float
) -> None:
    inferer = DiffusionSegmentationInferer(scheduler, steps, num_samples=2, seed=5, eta=eta, return_samples=True)
    batch = inferer(images, net)
    reversed_batch = inferer(images.flip(0), net).flip(0)
    singles = torch.cat([inferer(images[i : i + 1], net) for i in range(3)])
    assert torch.allclose(batch, singles, atol=1e-5) and torch.allclose(batch, reversed_batch, atol=1e-5)
    # the seed still matters, and members still differ
    assert not torch.allclose(inferer(images, net, seed=6), batch, atol=1e-3)
    assert not torch.allclose(batch[:, 0], batch[:, 1], atol=1e-3)


def test_sliding_window_seeds_per_window_whatever_the_window_batch(net: MedSegDiff) -> None:
    image = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))

    def run(sw_batch_size: int) -> torch.Tensor:
        inferer = DiffusionSlidingWindowInferer(
            DDIMScheduler(num_train_timesteps=1000),
            roi_size=SIZE,
            sw_batch_size=sw_batch_size,
            overlap=0.5,
            num_inference_steps=2,
            num_samples=2,
            seed=1,
            return_samples=True,
        )
        return inferer(image, net)

    one, three = run(1), run(3)
    assert one.shape == (1, 2, 1, 24, 24)
    assert torch.allclose(one, three, atol=1e-5)


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


class _Half(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


def test_diffusion_difference_maps_do_not_depend_on_the_batch() -> None:
    images = torch.rand(3, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    inferer = DiffusionDifferenceInferer(DDPMScheduler(num_train_timesteps=1000), (60, 90), output="score", seed=2)
    pair = DiffSegPair(_Identity(), _Half())
    batch = inferer(images, pair)
    singles = torch.cat([inferer(images[i : i + 1], pair) for i in range(3)])
    assert batch.shape == (3, 2, 1, *SIZE)
    assert torch.allclose(batch, singles, atol=1e-5)
    assert torch.allclose(inferer(images.flip(0), pair).flip(0), batch, atol=1e-5)
