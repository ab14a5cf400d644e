# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Prepare-batch family that turns batches into diffusion training samples for MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler
from monai.networks.utils import one_hot
from monai.utils import convert_to_tensor, look_up_option

from monai_diffseg.utils import diffusion_to_image, image_to_diffusion

__all__ = [
    "DiffusionTargetPrepareBatch",
    "MaskDiffusionPrepareBatch",
    "ImageDiffusionPrepareBatch",
    "mask_to_diffusion",
    "PREDICTION_TARGETS",
    "LOSS_WEIGHTINGS",
    "min_snr_weights",
]

PREDICTION_TARGETS = ("epsilon", "sample", "v_prediction")
#: per-timestep weightings of the diffusion loss (:class:`MaskDiffusionPrepareBatch`)
LOSS_WEIGHTINGS = ("none", "min_snr")


def min_snr_weights(alphas_cumprod: torch.Tensor, prediction_type: str, gamma: float = 5.0) -> torch.Tensor:
    """
    Min-SNR-gamma loss weights per timestep (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", ICCV 2023, arXiv:2303.09556): the weight of the x0 loss is ``min(SNR_t, gamma)``
    (``SNR_t = a_t / (1 - a_t)``), expressed for the regression target of ``prediction_type``: ``"sample"``
    ``min(SNR, gamma)``, ``"epsilon"`` ``min(SNR, gamma) / SNR``, ``"v_prediction"`` ``min(SNR, gamma) / (SNR + 1)``.

    Args:
        alphas_cumprod: ``(T,)`` the scheduler's cumulative alphas ``a_t``.
        prediction_type: one of :data:`PREDICTION_TARGETS`.
        gamma: the clamp (5 in the paper).

    Returns:
        ``(T,)`` float32 weights (not normalised).
    """
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma} (the paper uses 5).")
    a = alphas_cumprod.double()
    snr = a / (1 - a).clamp_min(1e-20)
    clamped = snr.clamp(max=gamma)
    kind = look_up_option(prediction_type, PREDICTION_TARGETS)
    weight = {"sample": clamped, "epsilon": clamped / snr, "v_prediction": clamped / (snr + 1)}[kind]
    return weight.float()


def mask_to_diffusion(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """
    Map a label to the diffusion sample space: ``(N, num_classes, *S)`` float in ``{-1, 1}``.

    Args:
        label: ``(N, 1, *S)``: binary ``{0, 1}`` when ``num_classes == 1``, else class indices ``0 .. num_classes - 1``
            (0: background); or ``(N, num_classes, *S)`` one-hot.
        num_classes: 1 for binary segmentation, otherwise the number of one-hot channels including background.

    Raises:
        ValueError: a wrong channel count or values outside the expected set.
    """
    label = torch.as_tensor(label)
    if label.ndim < 3:
        raise ValueError(f"label must have shape (N, 1, *spatial), got {tuple(label.shape)}.")
    if num_classes == 1 and label.shape[1] != 1:
        raise ValueError(f"binary label must have 1 channel, got shape {tuple(label.shape)}.")
    if label.shape[1] == num_classes:  # binary, or one-hot
        onehot = label.float()
        if not torch.all((onehot == 0) | (onehot == 1)):
            raise ValueError(
                f"{'binary' if num_classes == 1 else 'one-hot'} label must contain only 0 and 1, found "
                f"{torch.unique(onehot)[:8].tolist()}; scale {{0, 255}} masks to {{0, 1}} in preprocessing (e.g. "
                "monai_diffseg.transforms.BinaryMaskd)."
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
                f"class-index label values must lie in [0, {num_classes - 1}], found "
                f"[{int(idx.min())}, {int(idx.max())}]."
            )
        onehot = one_hot(idx, num_classes)
    else:
        raise ValueError(
            f"label must have 1 (class indices) or {num_classes} (one-hot) channels, got shape {tuple(label.shape)}."
        )
    return image_to_diffusion(onehot)


class DiffusionTargetPrepareBatch(DiffusionPrepareBatch):
    """
    Base of the family: MONAI's :class:`~monai.engines.utils.DiffusionPrepareBatch` hooks with a checked timestep
    range and prediction type. Unlike MONAI's class, the batch is noised here (:meth:`noise_sample`:
    ``eps ~ N(0, I)``, ``t`` uniform in ``timestep_range``, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` by
    ``scheduler.add_noise``), so the trainer's inferer calls the network on ``x_t`` directly. Subclasses build ``x_0``
    from the batch (:meth:`batch_tensors`) and return the trainer's tuple.

    Args:
        scheduler: a MONAI noise scheduler (``DDPMScheduler``, ...) with ``add_noise`` (``get_velocity`` for ``v``).
        prediction_type: ``"epsilon"`` (target ``eps``), ``"sample"`` (``x_0``) or ``"v_prediction"`` (``v``), as the
            scheduler's.
        timestep_range: ``(low, high)`` to draw ``t`` uniformly from ``[low, high)``; ``None`` uses ``[0, T)``.

    Raises:
        ValueError: an empty or out-of-schedule ``timestep_range``, or a ``prediction_type`` unlike the scheduler's.
    """

    def __init__(self, scheduler: Scheduler, prediction_type: str, timestep_range: Sequence[int] | None = None) -> None:
        super().__init__(num_train_timesteps=int(scheduler.num_train_timesteps))
        self.scheduler = scheduler
        self.prediction_type = look_up_option(prediction_type, PREDICTION_TARGETS)
        num_t = self.num_train_timesteps
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
                f"prediction_type '{self.prediction_type}' differs from the scheduler's '{sched_type}': the sampler "
                "would misread the network output. Use the same value for both."
            )

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """``(N,)`` steps drawn uniformly from ``[low, high)`` of ``timestep_range``."""
        return torch.randint(*self.timestep_range, (images.shape[0],), device=images.device).long()

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target of ``prediction_type``: ``eps``, ``x_0`` or ``v`` (``scheduler.get_velocity``)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return images
        return self.scheduler.get_velocity(images, noise, timesteps)  # type: ignore[attr-defined]

    def noise_sample(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_t, target, t)`` for ``x0`` ``(N, C, *S)`` in ``[-1, 1]``: noise, then steps, drawn in that order."""
        noise = self.get_noise(x0)
        t = self.get_timesteps(x0)
        return self.scheduler.add_noise(x0, noise, t), self.get_target(x0, noise, t), t

    def batch_tensors(
        self, batchdata: Any, keys: Sequence[str], device: str | torch.device | None, non_blocking: bool, **kwargs: Any
    ) -> list[torch.Tensor]:
        """The batch entries at ``keys`` as plain tensors on ``device`` (MetaTensor bookkeeping only slows every op)."""
        if not isinstance(batchdata, Mapping) or any(k not in batchdata for k in keys):
            got = list(batchdata.keys()) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(f"{type(self).__name__} needs a dict batch with keys {list(keys)}, got {got}.")
        to_kwargs = {"non_blocking": non_blocking, **kwargs}
        return [convert_to_tensor(batchdata[k], track_meta=False).to(device, **to_kwargs) for k in keys]


class MaskDiffusionPrepareBatch(DiffusionTargetPrepareBatch):
    """
    ``prepare_batch`` for ``SupervisedTrainer`` training a mask-diffusion model such as
    :class:`monai_diffseg.networks.nets.MedSegDiff`: ``x_0`` is the label (:func:`mask_to_diffusion`), noised as in
    :class:`DiffusionTargetPrepareBatch`; returns ``(x_t, {"target": eps | x_0 | v, "mask": {0, 1} mask}, (),
    {"timesteps": t, "image": image})`` for :class:`monai_diffseg.inferers.DiffusionSegmentationTrainInferer` and
    :class:`MaskDiffusionLoss` (``"mask"`` feeds the auxiliary anchor loss).

    Args:
        scheduler, prediction_type, timestep_range: as in :class:`DiffusionTargetPrepareBatch`.
        num_classes: mask channels (1 = binary).
        image_key: key of the image in the batch dict.
        label_key: key of the label in the batch dict.
        loss_weighting: ``"none"`` (every ``t`` counts alike) or ``"min_snr"`` (:func:`min_snr_weights`): the target
            dict then has ``"weight"`` ``(N,)``, the per-sample weights of :class:`MaskDiffusionLoss`, normalised to
            mean 1 over ``timestep_range`` so the balance with the auxiliary loss stays that of ``"none"``.
        snr_gamma: the min-SNR clamp ``gamma``.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        num_classes: int = 1,
        prediction_type: str = "epsilon",
        image_key: str = "image",
        label_key: str = "label",
        timestep_range: Sequence[int] | None = None,
        loss_weighting: str = "none",
        snr_gamma: float = 5.0,
    ) -> None:
        super().__init__(scheduler, prediction_type, timestep_range)
        self.num_classes = num_classes
        self.image_key = image_key
        self.label_key = label_key
        self.loss_weighting = look_up_option(loss_weighting, LOSS_WEIGHTINGS)
        self.weights: torch.Tensor | None = None
        if self.loss_weighting == "min_snr":
            alphas = getattr(scheduler, "alphas_cumprod", None)
            if alphas is None:
                raise ValueError(
                    f"loss_weighting='min_snr' needs a scheduler with alphas_cumprod (DDPM/DDIM), got "
                    f"{type(scheduler).__name__}."
                )
            w = min_snr_weights(torch.as_tensor(alphas), self.prediction_type, snr_gamma)
            low, high = self.timestep_range
            self.weights = w / w[low:high].mean()

    def __call__(  # type: ignore[override]
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]:
        image, label = self.batch_tensors(batchdata, (self.image_key, self.label_key), device, non_blocking, **kwargs)
        x0 = mask_to_diffusion(label, self.num_classes)
        x_t, target, t = self.noise_sample(x0)
        targets = {"target": target, "mask": diffusion_to_image(x0)}
        if self.weights is not None:
            targets["weight"] = self.weights.to(t.device)[t]
        return x_t, targets, (), {"timesteps": t, "image": image}


class ImageDiffusionPrepareBatch(DiffusionTargetPrepareBatch):
    """
    ``prepare_batch`` for ``SupervisedTrainer`` training an unconditional image diffusion model without labels, e.g.
    DiffSeg's lesion and healthy models (Shuai et al. 2024, arXiv:2404.16474;
    :class:`monai_diffseg.networks.nets.DiffSegDenoiser`; DiffSeg trains on a band of small-to-moderate noise levels,
    ``timestep_range``): ``x_0`` is the image in ``[-1, 1]``, noised as in :class:`DiffusionTargetPrepareBatch`.
    Returns ``(x_t, target, (), {"timesteps": t})`` for the default ``SimpleInferer`` and a plain ``MSELoss``; with
    ``"sample"`` (DiffSeg's x0-prediction) and ``target_key``, ``target`` is that image instead of ``x_0`` (paired
    training, as the reference code's healthy model mapping lesion images to lesion-free versions).

    Args:
        scheduler, timestep_range, prediction_type: as in :class:`DiffusionTargetPrepareBatch`.
        image_key: key of the image in the batch dict (or pass the image tensor itself as the batch).
        target_key: optional key of a paired target image (``"sample"`` only).
        value_range: image intensities mapped to ``[-1, 1]`` (default ``(0, 1)``).

    Raises:
        ValueError: as in :class:`DiffusionTargetPrepareBatch`, ``target_key`` without ``"sample"``, or
            ``value_range`` with ``high <= low``.
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
        super().__init__(scheduler, prediction_type, timestep_range)
        if target_key is not None and self.prediction_type != "sample":
            raise ValueError(f"target_key needs prediction_type='sample', got '{self.prediction_type}'.")
        self.image_key = image_key
        self.target_key = target_key
        self.value_range = tuple(float(v) for v in value_range)
        image_to_diffusion(torch.zeros(1), self.value_range)  # validates value_range

    def __call__(  # type: ignore[override]
        self,
        batchdata: Mapping[str, Any] | torch.Tensor,
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        if isinstance(batchdata, torch.Tensor):
            batchdata = {self.image_key: batchdata}
        keys = [self.image_key] + ([self.target_key] if self.target_key is not None else [])
        tensors = self.batch_tensors(batchdata, keys, device, non_blocking, **kwargs)
        images = [image_to_diffusion(x, self.value_range) for x in tensors]
        x_t, target, t = self.noise_sample(images[0])
        if self.target_key is not None:
            target = images[1]
            if target.shape != x_t.shape:
                raise ValueError(
                    f"target '{self.target_key}' {tuple(target.shape)} must have the image's {tuple(x_t.shape)}."
                )
        return x_t, target, (), {"timesteps": t}
