# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""ImageDiffusionPrepareBatch: x_t construction, t range, targets, errors, and plain SupervisedTrainer use."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.schedulers import DDPMScheduler

from monai_diffseg.engines import ImageDiffusionPrepareBatch, diffusion_to_image, image_to_diffusion
from monai_diffseg.networks.nets import DiffSegDenoiser


def _sched(kind: str = "sample") -> DDPMScheduler:
    return DDPMScheduler(1000, schedule="linear_beta", prediction_type=kind)


def test_x0_target_and_t_range() -> None:
    torch.manual_seed(0)
    pb = ImageDiffusionPrepareBatch(_sched(), timestep_range=(60, 151))
    image = torch.rand(64, 3, 8, 8)
    x_t, target, args, kwargs = pb({"image": image, "label": torch.zeros(64, 1, 8, 8)})
    assert args == () and set(kwargs) == {"timesteps"}
    t = kwargs["timesteps"]
    assert t.min() >= 60 and t.max() <= 150 and len(t.unique()) > 10
    assert torch.allclose(target, image * 2 - 1)
    # x_t is the scheduler's forward process of the target: the residual has the right variance
    a = _sched().alphas_cumprod[t].float().view(-1, 1, 1, 1)
    eps = (x_t - a.sqrt() * target) / (1 - a).sqrt()
    assert abs(eps.std().item() - 1.0) < 0.05 and abs(eps.mean().item()) < 0.05


def test_paired_target_and_other_targets() -> None:
    image, healthy = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    _, target, _, _ = ImageDiffusionPrepareBatch(_sched(), target_key="healthy")({"image": image, "healthy": healthy})
    assert torch.allclose(target, healthy * 2 - 1)
    torch.manual_seed(1)
    x_t, eps, _, kw = ImageDiffusionPrepareBatch(_sched("epsilon"), prediction_type="epsilon")(image)
    a = _sched().alphas_cumprod[kw["timesteps"]].float().view(-1, 1, 1, 1)
    assert torch.allclose(x_t, a.sqrt() * (image * 2 - 1) + (1 - a).sqrt() * eps, atol=1e-5)


def test_value_range_round_trip() -> None:
    x = torch.rand(2, 1, 4, 4) * 255
    assert torch.allclose(diffusion_to_image(image_to_diffusion(x, (0, 255)), (0, 255)), x, atol=1e-4)


def test_errors_name_the_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1200\).*<= 1000"):
        ImageDiffusionPrepareBatch(_sched(), timestep_range=(0, 1200))
    with pytest.raises(ValueError, match=r"\(50, 50\)"):
        ImageDiffusionPrepareBatch(_sched(), timestep_range=(50, 50))
    with pytest.raises(ValueError, match="differs from the scheduler"):
        ImageDiffusionPrepareBatch(_sched("epsilon"), prediction_type="sample")
    with pytest.raises(ValueError, match=r"keys \['image', 'healthy'\]"):
        ImageDiffusionPrepareBatch(_sched(), target_key="healthy")({"image": torch.rand(1, 3, 4, 4)})


def test_plain_supervised_trainer_trains() -> None:
    torch.manual_seed(0)
    net = DiffSegDenoiser(channels=(8, 16))
    data = [{"image": torch.rand(4, 3, 16, 16) * 0.2 + 0.4} for _ in range(6)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=3, train_data_loader=data, network=net,
        optimizer=torch.optim.Adam(net.parameters(), 5e-3), loss_function=torch.nn.MSELoss(),
        prepare_batch=ImageDiffusionPrepareBatch(_sched(), timestep_range=(20, 300)),
    )  # fmt: skip
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output[0]["loss"]))
    trainer.run()
    assert len(losses) == 18 and sum(losses[-3:]) < 0.8 * sum(losses[:3])
