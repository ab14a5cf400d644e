# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Prepare-batch that turns (image, label) pairs into diffusion training samples for ``SupervisedTrainer``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.networks.schedulers import Scheduler
from monai.utils import convert_to_tensor, look_up_option

__all__ = ["MaskDiffusionPrepareBatch", "mask_to_diffusion", "PREDICTION_TARGETS"]

PREDICTION_TARGETS = ("epsilon", "sample", "v_prediction")


def mask_to_diffusion(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """
    Map a segmentation label to the diffusion sample space ``[-1, 1]``.

    Args:
        label: ``(N, 1, *S)`` label; binary ``{0, 1}`` when ``num_classes == 1``, else class indices
            ``0 .. num_classes - 1`` (``0`` is background). A ``(N, num_classes, *S)`` one-hot label is accepted too.
        num_classes: 1 for binary segmentation (one foreground channel), otherwise the number of one-hot channels
            including background.

    Returns:
        ``(N, num_classes, *S)`` float tensor with values in ``{-1, 1}``.

    Raises:
        ValueError: when the label has the wrong channel count or values outside the expected set.
    """
    label = torch.as_tensor(label)
    if label.ndim < 3:
        raise ValueError(f"label must have shape (N, 1, *spatial), got {tuple(label.shape)}.")
    if num_classes == 1:
        if label.shape[1] != 1:
            raise ValueError(f"binary label must have 1 channel, got shape {tuple(label.shape)}.")
        onehot = label.float()
        if not torch.all((onehot == 0) | (onehot == 1)):
            raise ValueError(
                f"binary label must contain only 0 and 1, found {torch.unique(onehot)[:8].tolist()}; "
                "scale {0, 255} masks to {0, 1} in preprocessing (e.g. monai_diffseg.transforms.BinaryMaskd)."
            )
    elif label.shape[1] == num_classes:
        onehot = label.float()
        if not torch.all((onehot == 0) | (onehot == 1)):
            raise ValueError(
                f"one-hot label must contain only 0 and 1, found {torch.unique(onehot)[:8].tolist()}; "
                "scale {0, 255} masks to {0, 1} in preprocessing (e.g. monai_diffseg.transforms.BinaryMaskd)."
            )
    elif label.shape[1] == 1:
        if label.is_floating_point() and not torch.equal(label, label.round()):
            raise ValueError(
                "class-index label must hold integer class indices, found fractional values "
                f"{torch.unique(label[label != label.round()])[:8].tolist()} (resample labels with mode='nearest')."
            )
        idx = label.long()
        if idx.min() < 0 or idx.max() >= num_classes:
            raise ValueError(
                f"class-index label values must lie in [0, {num_classes - 1}], found [{int(idx.min())}, {int(idx.max())}]."
            )
        onehot = torch.zeros((label.shape[0], num_classes, *label.shape[2:]), device=label.device)
        onehot.scatter_(1, idx, 1.0)
    else:
        raise ValueError(
            f"label must have 1 (class indices) or {num_classes} (one-hot) channels, got shape {tuple(label.shape)}."
        )
    return onehot * 2.0 - 1.0


class MaskDiffusionPrepareBatch(PrepareBatch):
    """
    ``prepare_batch`` for MONAI's ``SupervisedTrainer`` that trains a mask-diffusion model such as
    :class:`monai_diffseg.networks.nets.MedSegDiff`.

    For each batch it maps the label to ``x_0`` in ``[-1, 1]`` (binary, or one-hot for multi-class), draws
    ``t ~ U{0, T-1}`` and ``eps ~ N(0, I)``, builds ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with the scheduler, and
    returns ``(x_t, targets, (), {"timesteps": t, "image": image})``. The trainer's inferer then calls
    ``network(x_t, timesteps=t, image=image)``; see
    :class:`monai_diffseg.inferers.DiffusionSegmentationTrainInferer`. ``targets`` is a dict:
    ``{"target": eps | x_0 | v, "mask": x_0 mapped back to {0, 1}}``, consumed by
    :class:`monai_diffseg.engines.MaskDiffusionLoss` (``"mask"`` feeds the auxiliary anchor loss).

    Args:
        scheduler: a MONAI noise scheduler (``DDPMScheduler``, ``DDIMScheduler`` ...) defining ``alphas_cumprod``.
        num_classes: mask channels (1 = binary).
        prediction_type: ``"epsilon"``, ``"sample"`` (x0) or ``"v_prediction"``.
        image_key: key of the image in the batch dict.
        label_key: key of the label in the batch dict.
        timestep_range: optional ``(low, high)`` to draw ``t`` from ``[low, high)`` instead of ``[0, T)``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_classes: int = 1,
        prediction_type: str = "epsilon",
        image_key: str = "image",
        label_key: str = "label",
        timestep_range: tuple[int, int] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.num_classes = num_classes
        self.prediction_type = look_up_option(prediction_type, PREDICTION_TARGETS)
        self.image_key = image_key
        self.label_key = label_key
        low, high = timestep_range or (0, scheduler.num_train_timesteps)
        if not 0 <= low < high <= scheduler.num_train_timesteps:
            raise ValueError(
                f"timestep_range {timestep_range} must satisfy 0 <= low < high <= {scheduler.num_train_timesteps}."
            )
        self.timestep_range = (int(low), int(high))
        sched_type = getattr(scheduler, "prediction_type", None)
        if sched_type is not None and sched_type != self.prediction_type:
            raise ValueError(
                f"prediction_type '{self.prediction_type}' differs from the scheduler's '{sched_type}': the sampler "
                "would misread the network output. Use the same value for both."
            )

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]:
        if not isinstance(batchdata, Mapping) or self.image_key not in batchdata or self.label_key not in batchdata:
            keys = list(batchdata.keys()) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(
                f"MaskDiffusionPrepareBatch needs a dict batch with keys '{self.image_key}' and '{self.label_key}', "
                f"got {keys}."
            )
        # plain tensors: MetaTensor bookkeeping is useless here and slows every op down
        image = convert_to_tensor(batchdata[self.image_key], track_meta=False)
        label = convert_to_tensor(batchdata[self.label_key], track_meta=False)
        image = image.to(device, non_blocking=non_blocking, **kwargs)
        label = label.to(device, non_blocking=non_blocking, **kwargs)
        x0 = mask_to_diffusion(label, self.num_classes)
        noise = torch.randn_like(x0)
        t = torch.randint(*self.timestep_range, (x0.shape[0],), device=x0.device).long()
        x_t = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "sample":
            target = x0
        else:
            target = self.scheduler.get_velocity(x0, noise, t)
        targets = {"target": target, "mask": (x0 + 1.0) / 2.0}
        return x_t, targets, (), {"timesteps": t, "image": image}
