# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The diffusion prepare-batch family: MaskDiffusionPrepareBatch (labels) and ImageDiffusionPrepareBatch (images):
x_t construction, t range, targets, errors, and plain SupervisedTrainer use."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_diffseg.engines import ImageDiffusionPrepareBatch, MaskDiffusionPrepareBatch, mask_to_diffusion
from monai_diffseg.networks.nets import DiffSegDenoiser
from monai_diffseg.utils import diffusion_to_image, image_to_diffusion


def _batch(n: int = 4, num_classes: int = 1, size: tuple = (8, 12)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    high = 2 if num_classes == 1 else num_classes
    return {
        "image": torch.randn(n, 3, *size, generator=g),
        "label": torch.randint(0, high, (n, 1, *size), generator=g).float(),
    }


def _alphas(scheduler: DDPMScheduler, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = scheduler.alphas_cumprod[t].float().reshape(-1, *([1] * (ndim - 1)))
    return a.sqrt(), (1 - a).sqrt()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_forward_process_and_targets(prediction_type: str) -> None:
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    prepare = MaskDiffusionPrepareBatch(scheduler, num_classes=1, prediction_type=prediction_type)
    batch = _batch()
    torch.manual_seed(0)
    x_t, targets, args, kwargs = prepare(batch)
    torch.manual_seed(0)
    x_t_again, targets_again, _, kwargs_again = prepare(batch)
    assert torch.equal(x_t, x_t_again) and torch.equal(targets["target"], targets_again["target"])
    assert torch.equal(kwargs["timesteps"], kwargs_again["timesteps"])

    assert args == ()
    assert set(kwargs) == {"timesteps", "image"} and set(targets) == {"target", "mask"}
    assert torch.equal(kwargs["image"], batch["image"])
    t = kwargs["timesteps"]
    assert t.dtype == torch.long and t.shape == (4,) and int(t.min()) >= 0 and int(t.max()) < 1000
    assert torch.equal(targets["mask"], batch["label"])
    x0 = batch["label"] * 2 - 1
    sqrt_a, sqrt_1ma = _alphas(scheduler, t, x0.ndim)
    eps = (x_t - sqrt_a * x0) / sqrt_1ma  # the noise that was used, recovered from x_t
    assert torch.allclose(x_t, sqrt_a * x0 + sqrt_1ma * eps, atol=1e-6)
    expected = {"epsilon": eps, "sample": x0, "v_prediction": sqrt_a * eps - sqrt_1ma * x0}[prediction_type]
    assert torch.allclose(targets["target"], expected, atol=1e-4)
    # the recovered noise is standard normal (so x_t really is sqrt(a_t) x0 + sqrt(1 - a_t) eps with eps ~ N(0, I))
    assert abs(float(eps.mean())) < 0.2 and abs(float(eps.std()) - 1) < 0.2


def test_binary_label_maps_to_plus_minus_one() -> None:
    label = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    x0 = mask_to_diffusion(label, num_classes=1)
    assert x0.shape == (1, 1, 2, 2)
    assert torch.equal(x0, torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]))
    assert set(mask_to_diffusion(_batch()["label"], 1).unique().tolist()) == {-1.0, 1.0}


def test_class_indices_to_one_hot() -> None:
    label = torch.tensor([[[[0, 1, 2], [2, 1, 0]]]])
    x0 = mask_to_diffusion(label, num_classes=3)
    assert x0.shape == (1, 3, 2, 3)
    expected = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 3, 1, 2).float() * 2 - 1
    assert torch.equal(x0, expected)
    assert torch.equal((x0 + 1).sum(1), torch.full((1, 2, 3), 2.0))  # exactly one +1 per voxel
    # one-hot input is accepted as it is
    assert torch.equal(mask_to_diffusion((expected + 1) / 2, num_classes=3), expected)


def test_multiclass_prepare_batch_and_metatensor_input() -> None:
    scheduler = DDIMScheduler(num_train_timesteps=100)
    prepare = MaskDiffusionPrepareBatch(scheduler, num_classes=3)
    batch = _batch(num_classes=3)
    batch = {"image": MetaTensor(batch["image"]), "label": MetaTensor(batch["label"])}
    x_t, targets, _, kwargs = prepare(batch)
    assert x_t.shape == (4, 3, 8, 12) and targets["mask"].shape == (4, 3, 8, 12)
    assert not isinstance(x_t, MetaTensor) and not isinstance(kwargs["image"], MetaTensor)
    assert torch.equal(targets["mask"].argmax(1, keepdim=True).float(), batch["label"].as_tensor())


def test_binary_255_label_error() -> None:
    label = torch.tensor([[[[0.0, 255.0], [255.0, 0.0]]]])
    with pytest.raises(ValueError) as err:
        mask_to_diffusion(label, num_classes=1)
    assert "255" in str(err.value) and "BinaryMaskd" in str(err.value)
    prepare = MaskDiffusionPrepareBatch(DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match="BinaryMaskd"):
        prepare({"image": torch.zeros(1, 3, 2, 2), "label": label})


@pytest.mark.parametrize("bad", [3, -1])
def test_class_index_out_of_range(bad: int) -> None:
    label = torch.tensor([[[[0, 1], [2, bad]]]])
    with pytest.raises(ValueError, match=r"\[0, 2\].*found"):
        mask_to_diffusion(label, num_classes=3)


def test_wrong_label_channels() -> None:
    with pytest.raises(ValueError, match="1 channel"):
        mask_to_diffusion(torch.zeros(1, 2, 4, 4), num_classes=1)
    with pytest.raises(ValueError, match=r"1 \(class indices\) or 3 \(one-hot\)"):
        mask_to_diffusion(torch.zeros(1, 2, 4, 4), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        mask_to_diffusion(torch.zeros(4, 4), num_classes=1)


def test_prediction_type_mismatch() -> None:
    with pytest.raises(ValueError, match="'sample' differs from the scheduler's 'epsilon'"):
        MaskDiffusionPrepareBatch(DDPMScheduler(prediction_type="epsilon"), prediction_type="sample")
    with pytest.raises(ValueError):
        MaskDiffusionPrepareBatch(DDPMScheduler(), prediction_type="x0")  # unknown name


def test_missing_batch_keys() -> None:
    prepare = MaskDiffusionPrepareBatch(DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match="keys \\['image', 'label'\\].*\\['img', 'seg'\\]"):
        prepare({"img": torch.zeros(1, 3, 4, 4), "seg": torch.zeros(1, 1, 4, 4)})
    with pytest.raises(ValueError, match="dict batch"):
        prepare([torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4)])  # type: ignore[arg-type]
    custom = MaskDiffusionPrepareBatch(DDPMScheduler(num_train_timesteps=10), image_key="img", label_key="seg")
    x_t, _, _, _ = custom({"img": torch.zeros(1, 3, 4, 4), "seg": torch.zeros(1, 1, 4, 4)})
    assert x_t.shape == (1, 1, 4, 4)


def test_timestep_range() -> None:
    scheduler = DDPMScheduler(num_train_timesteps=100)
    prepare = MaskDiffusionPrepareBatch(scheduler, timestep_range=(10, 13))
    torch.manual_seed(0)
    seen = set()
    for _ in range(5):
        _, _, _, kwargs = prepare(_batch(n=16, size=(2, 2)))
        seen |= set(kwargs["timesteps"].tolist())
    assert seen == {10, 11, 12}
    for bad in [(5, 5), (-1, 10), (0, 101), (20, 10)]:
        with pytest.raises(ValueError, match="timestep_range"):
            MaskDiffusionPrepareBatch(scheduler, timestep_range=bad)


def test_bad_one_hot_or_fractional_labels_rejected() -> None:
    with pytest.raises(ValueError):  # {0, 255} one-hot would silently become x0 in {-1, 509}
        mask_to_diffusion(torch.tensor([0.0, 255.0, 255.0, 0.0]).reshape(1, 2, 1, 2), num_classes=2)
    with pytest.raises(ValueError):  # 1.5 would silently be truncated to class 1
        mask_to_diffusion(torch.tensor([[[[0.0, 1.5]]]]), num_classes=3)


# --- ImageDiffusionPrepareBatch ---------------------------------------------------------------------------------------


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


def test_one_family_on_monai_hooks() -> None:
    mask = MaskDiffusionPrepareBatch(_sched("epsilon"), timestep_range=(3, 4))
    image = ImageDiffusionPrepareBatch(_sched(), timestep_range=(3, 4))
    assert isinstance(mask, DiffusionPrepareBatch) and isinstance(image, DiffusionPrepareBatch)
    x0 = torch.rand(2, 1, 4, 4)
    for prepare in (mask, image):
        assert torch.equal(prepare.get_timesteps(x0), torch.tensor([3, 3]))
    noise, t = torch.randn(2, 1, 4, 4), torch.tensor([3, 3])
    assert torch.equal(mask.get_target(x0, noise, t), noise) and torch.equal(image.get_target(x0, noise, t), x0)
