# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Prepare-batch for unconditional image diffusion (DiffSeg's lesion and healthy models) with plain SupervisedTrainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.networks.schedulers import Scheduler
from monai.utils import convert_to_tensor, look_up_option

from monai_diffseg.engines.prepare_batch import PREDICTION_TARGETS

__all__ = ["ImageDiffusionPrepareBatch", "image_to_diffusion", "diffusion_to_image"]


def image_to_diffusion(image: torch.Tensor, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """
    Map image intensities from ``value_range`` to the diffusion space ``[-1, 1]``.

    Args:
        image: ``(N, C, *S)`` image, e.g. scaled to ``[0, 1]`` by ``ScaleIntensityRanged``.
        value_range: ``(low, high)`` intensities mapped to ``-1`` and ``1``.

    Returns:
        float tensor of the same shape.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {tuple(value_range)}.")
    return (image.float() - low) / (high - low) * 2.0 - 1.0


def diffusion_to_image(x: torch.Tensor, value_range: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`image_to_diffusion`."""
    low, high = float(value_range[0]), float(value_range[1])
    return (x.float() + 1.0) / 2.0 * (high - low) + low


class ImageDiffusionPrepareBatch(PrepareBatch):
    """
    ``prepare_batch`` for MONAI's ``SupervisedTrainer`` that trains an unconditional image diffusion model, e.g.
    DiffSeg's lesion and healthy models (Shuai et al. 2024, arXiv:2404.16474;
    :class:`monai_diffseg.networks.nets.DiffSegDenoiser`).

    For each batch it maps the image to ``x_0`` in ``[-1, 1]``, draws ``t`` uniformly from ``timestep_range``
    (``[low, high)``; DiffSeg trains on and reads out a band of small-to-moderate noise levels) and ``eps ~ N(0, I)``,
    builds ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with the scheduler, and returns
    ``(x_t, target, (), {"timesteps": t})``. The trainer's default ``SimpleInferer`` then calls
    ``network(x_t, timesteps=t)`` and a plain ``torch.nn.MSELoss`` compares it with ``target``:

    - ``prediction_type="sample"`` (default, DiffSeg's x0-prediction): ``target = x_0``, or the image at
      ``target_key`` when given (paired training toward another image, as the reference code's healthy model that
      maps lesion images to lesion-free versions);
    - ``"epsilon"``: ``target = eps``; ``"v_prediction"``: ``target = v``.

    No label is read: this trains without pixel masks.

    Args:
        scheduler: a MONAI noise scheduler (``DDPMScheduler`` ...) defining ``alphas_cumprod``.
        timestep_range: ``(low, high)`` to draw ``t`` from ``[low, high)``; ``None`` uses ``[0, T)``.
        prediction_type: ``"sample"``, ``"epsilon"`` or ``"v_prediction"``; must match the scheduler's.
        image_key: key of the image in the batch dict.
        target_key: optional key of a paired target image (``"sample"`` only).
        value_range: image intensities mapped to ``[-1, 1]`` (default ``(0, 1)``).

    Raises:
        ValueError: an empty or out-of-schedule ``timestep_range``, or a ``prediction_type`` that differs from the
            scheduler's.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        timestep_range: Sequence[int] | None = None,
        prediction_type: str = "sample",
        image_key: str = "image",
        target_key: str | None = None,
        value_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        self.scheduler = scheduler
        self.prediction_type = look_up_option(prediction_type, PREDICTION_TARGETS)
        num_t = int(scheduler.num_train_timesteps)
        low, high = (0, num_t) if timestep_range is None else (int(timestep_range[0]), int(timestep_range[1]))
        if not 0 <= low < high <= num_t:
            raise ValueError(
                f"timestep_range {tuple(timestep_range or ())} must satisfy 0 <= low < high <= {num_t} "
                f"(the scheduler's num_train_timesteps): t is drawn from [low, high)."
            )
        self.timestep_range = (low, high)
        sched_type = getattr(scheduler, "prediction_type", None)
        if sched_type is not None and sched_type != self.prediction_type:
            raise ValueError(
                f"prediction_type '{self.prediction_type}' differs from the scheduler's '{sched_type}'. Use the same "
                "value for both."
            )
        if target_key is not None and self.prediction_type != "sample":
            raise ValueError(f"target_key needs prediction_type='sample', got '{self.prediction_type}'.")
        self.image_key = image_key
        self.target_key = target_key
        self.value_range = tuple(float(v) for v in value_range)
        image_to_diffusion(torch.zeros(1), self.value_range)  # validates value_range

    def __call__(
        self,
        batchdata: Mapping[str, Any] | torch.Tensor,
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        """
        Args:
            batchdata: dict batch with ``image_key`` ``(N, C, *S)`` (or the image tensor itself).
            device: target device.
            non_blocking: passed to ``Tensor.to``.

        Returns:
            ``(x_t, target, (), {"timesteps": t})``.
        """
        if isinstance(batchdata, torch.Tensor):
            batchdata = {self.image_key: batchdata}
        needed = [k for k in (self.image_key, self.target_key) if k is not None]
        if not isinstance(batchdata, Mapping) or any(k not in batchdata for k in needed):
            keys = list(batchdata.keys()) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(f"ImageDiffusionPrepareBatch needs a dict batch with keys {needed}, got {keys}.")
        image = convert_to_tensor(batchdata[self.image_key], track_meta=False)
        x0 = image_to_diffusion(image.to(device, non_blocking=non_blocking, **kwargs), self.value_range)
        noise = torch.randn_like(x0)
        t = torch.randint(*self.timestep_range, (x0.shape[0],), device=x0.device).long()
        x_t = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "sample":
            if self.target_key is None:
                target = x0
            else:
                target_img = convert_to_tensor(batchdata[self.target_key], track_meta=False)
                target = image_to_diffusion(target_img.to(device, non_blocking=non_blocking, **kwargs), self.value_range)
                if target.shape != x0.shape:
                    raise ValueError(
                        f"target '{self.target_key}' {tuple(target.shape)} must have the shape of the image "
                        f"{tuple(x0.shape)}."
                    )
        elif self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(x0, noise, t)
        return x_t, target, (), {"timesteps": t}
