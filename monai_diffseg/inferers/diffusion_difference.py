# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""DiffSeg's diffusion-difference inferer: lesion maps from the difference of two image diffusion models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from monai.utils import convert_to_tensor
from skimage.filters import threshold_otsu

from monai_diffseg.inferers.diffusion_segmentation import prediction_to_x0
from monai_diffseg.utils import (
    batch_item_names,
    check_finite,
    gaussian_blur,
    image_to_diffusion,
    look_up_named_option,
    unwrap_network,
)

__all__ = [
    "DiffusionDifferenceInferer",
    "DIFFSEG_TIMESTEPS",
    "DIFFSEG_FIXED_THRESHOLD",
    "THRESHOLD_METHODS",
    "NORMALIZATIONS",
    "grayscale",
    "otsu_threshold",
]

#: DiffSeg's noise steps: 60, 70, ..., 150.
DIFFSEG_TIMESTEPS: tuple[int, ...] = tuple(range(60, 151, 10))
#: the reference code's fixed threshold expressed on the lesion score ``1 - D_norm``: it keeps
#: ``clip(1.2 * 255 * D_norm, 0, 255) < 180``, i.e. ``D_norm < 180 / 306``, i.e. ``score > 1 - 180 / 306``.
DIFFSEG_FIXED_THRESHOLD: float = 1.0 - 180.0 / (1.2 * 255.0)
THRESHOLD_METHODS = ("fixed", "otsu")
NORMALIZATIONS = ("minmax", "percentile")
POLARITIES = ("dark", "bright")
OUTPUTS = ("mask", "score")


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """
    Grayscale ``G`` ``(B, 1, *S)`` of ``x`` ``(B, C, *S)``: ITU-R 601 luma for 3 channels (the reference code's
    weights), the identity for 1 channel, the channel mean otherwise.
    """
    if x.shape[1] == 1:
        return x
    if x.shape[1] == 3:
        w = torch.tensor((0.299, 0.587, 0.114), dtype=x.dtype, device=x.device).reshape(1, 3, *([1] * (x.ndim - 2)))
        return (x * w).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def otsu_threshold(maps: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """
    ``(B,)`` float32 Otsu thresholds (on ``maps``' device) of ``maps`` ``(B, ...)``: foreground is ``maps > threshold``
    (none for a constant map). :func:`skimage.filters.threshold_otsu` over a ``bins``-bin histogram of each map's own
    range, on the CPU (one copy per inferer call, negligible next to the network calls).
    """
    flat = maps.detach().reshape(maps.shape[0], -1).float().cpu().numpy()
    return torch.tensor([float(threshold_otsu(m, nbins=bins)) for m in flat], device=maps.device)


class DiffusionDifferenceInferer(Inferer):
    """
    DiffSeg inference (Shuai et al., "DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference",
    2024, arXiv:2404.16474): a lesion map from the difference between two image diffusion models (one trained on
    lesion images, one toward healthy skin), for every ``t`` in ``timesteps`` and image ``x`` (``x_0`` in ``[-1, 1]``):

    1. ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps_t``, the **same** ``x_t`` for both models (``eps_t`` from a
       generator seeded ``seed + k`` for the ``k``-th step, the same for every image of a batch, so an image's maps
       do not depend on the batch it is in);
    2. noise maps ``n = x_t - x0_model(x_t, t)`` (``epsilon``/``v_prediction`` outputs are converted to ``x_0``);
    3. ``D = G(n_healthy) - lesion_weight * G(n_lesion)`` (``G``: :func:`grayscale`; lambda = 1.5 as in the paper),
       optionally Gaussian-smoothed;
    4. per image and step normalised to ``D_norm`` in ``[0, 1]``. The healthy model turns a dark lesion into lighter
       skin, so ``D`` is **negative** on the lesion: the score is ``1 - D_norm`` (``"dark"``, the reference's
       ``gray < threshold``) or ``D_norm`` (``"bright"``);
    5. thresholded: ``"fixed"`` (``score >= threshold``; :data:`DIFFSEG_FIXED_THRESHOLD` = 0.412 is the reference
       code's ``clip(1.2 * 255 * D_norm) < 180``) or ``"otsu"`` (per map).

    The ``T`` outputs are stacked like ensemble members, so fusion (DiffSeg's DenseCRF of K random subsets of H:
    :class:`~monai_diffseg.transforms.EnsembleFusiond`, ``random_subset``), uncertainty and diversity (DiffSeg's
    "GED" is the ``l2`` sample diversity) apply directly.

    Args:
        scheduler: the training schedule (with ``alphas_cumprod``, e.g. ``DDPMScheduler``); its ``prediction_type``
            says what the networks predict.
        timesteps: the noise steps (default 60, 70, ..., 150), each in ``[0, num_train_timesteps - 1]``.
        lesion_weight: lambda in step 3.
        threshold_method: ``"fixed"`` or ``"otsu"``.
        threshold: score threshold of ``"fixed"``, in ``[0, 1]``.
        normalization: ``"minmax"`` (the reference code's) or ``"percentile"`` (1st-99th percentiles, clipped).
        polarity: ``"dark"`` (lesions darker than skin, dermoscopy) or ``"bright"``.
        smooth_sigma: Gaussian smoothing (pixels) of ``D`` before normalisation; 0 disables it.
        output: ``"mask"`` (binary) or ``"score"`` (lesion scores in ``[0, 1]``), per step.
        healthy_network: the healthy model, when ``network`` is the lesion model alone rather than a
            :class:`~monai_diffseg.networks.nets.DiffSegPair` (what a bundle passes).
        seed: base seed of the per-step noise.
        value_range: input intensities mapped to ``[-1, 1]`` (as in training); integer images must lie in it.
        step_batch_size: at most this many steps per network call (``None``: all steps at once).

    Shapes:
        inputs ``(N, C, *S)`` (or a list of ``(C, *S)`` images of one size) -> ``(N, T, 1, *S)``.

    Raises:
        ValueError: empty ``timesteps`` or a step beyond the schedule, unknown options, an input whose channels differ
            from the network's, images of mixed sizes, NaN/Inf in the images or in the networks' outputs.
        TypeError: an integer image whose values exceed ``value_range`` (the message says how to convert it).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        timesteps: Sequence[int] = DIFFSEG_TIMESTEPS,
        lesion_weight: float = 1.5,
        threshold_method: str = "fixed",
        threshold: float = DIFFSEG_FIXED_THRESHOLD,
        normalization: str = "minmax",
        polarity: str = "dark",
        smooth_sigma: float = 0.0,
        output: str = "mask",
        healthy_network: nn.Module | None = None,
        seed: int = 0,
        value_range: Sequence[float] = (0.0, 1.0),
        step_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(
                f"{type(scheduler).__name__} has no alphas_cumprod: {type(self).__name__} noises the images as "
                "sqrt(a_t) x_0 + sqrt(1 - a_t) eps; pass the training schedule as a DDPMScheduler or DDIMScheduler."
            )
        num_t = int(scheduler.num_train_timesteps)
        steps = [int(t) for t in timesteps]
        if len(steps) == 0:
            raise ValueError(
                f"timesteps must hold at least one noise step in [0, {num_t - 1}] (e.g. DiffSeg's 60, 70, ..., 150), "
                "got an empty set."
            )
        bad = [t for t in steps if not 0 <= t < num_t]
        if bad:
            raise ValueError(
                f"timesteps {bad} are outside the scheduler's range [0, {num_t - 1}] (num_train_timesteps={num_t})."
            )
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] (a normalised lesion score), got {threshold}.")
        if smooth_sigma < 0:
            raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma}.")
        if step_batch_size is not None and step_batch_size < 1:
            raise ValueError(f"step_batch_size must be >= 1 or None, got {step_batch_size}.")
        self.scheduler = scheduler
        self.timesteps = tuple(steps)
        self.lesion_weight = float(lesion_weight)
        self.threshold_method = look_up_named_option("threshold_method", threshold_method, THRESHOLD_METHODS)
        self.threshold = float(threshold)
        self.normalization = look_up_named_option("normalization", normalization, NORMALIZATIONS)
        self.polarity = look_up_named_option("polarity", polarity, POLARITIES)
        self.output = look_up_named_option("output", output, OUTPUTS)
        self.smooth_sigma = float(smooth_sigma)
        self.healthy_network = healthy_network
        self.seed = int(seed)
        self.value_range = tuple(float(v) for v in value_range)
        self.step_batch_size = step_batch_size

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor | Sequence[torch.Tensor], network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The ``output`` entry (per-step masks or lesion scores, ``(N, T, 1, *S)``) of :meth:`compute`."""
        return self.compute(inputs, network, *args, **kwargs)[self.output]

    def _check_inputs(self, inputs: torch.Tensor | Sequence[torch.Tensor], module: Any) -> torch.Tensor:
        names = batch_item_names(inputs)
        if isinstance(inputs, (list, tuple)):
            if len(inputs) == 0:
                raise ValueError("inputs must hold at least one image, got an empty sequence.")
            metas = [getattr(i, "meta", None) for i in inputs]
            if all(isinstance(m, dict) and "filename_or_obj" in m for m in metas):
                names = [str(m["filename_or_obj"]) for m in metas]  # type: ignore[index]
            shapes = sorted({tuple(convert_to_tensor(i).shape) for i in inputs})
            if len(shapes) > 1:
                raise ValueError(
                    f"images of mixed sizes cannot be inferred as one batch, got shapes {shapes}; resize them to one "
                    "size first (monai.transforms.Resized with the training image_size)."
                )
            inputs = torch.stack([convert_to_tensor(i, track_meta=False) for i in inputs])
        image = convert_to_tensor(inputs, track_meta=False)
        spatial_dims = int(getattr(module, "spatial_dims", image.ndim - 2))
        if image.ndim != spatial_dims + 2:
            raise ValueError(
                f"inputs must have shape (N, C, {', '.join('HWD'[:spatial_dims])}), got {tuple(image.shape)}."
            )
        expected = getattr(module, "in_channels", None)
        if expected is not None and image.shape[1] != int(expected):
            kind = {1: "grayscale", 3: "RGB"}
            raise ValueError(
                f"inputs have {image.shape[1]} channel(s) ({kind.get(image.shape[1], 'multi-channel')}) but the "
                f"network was built for in_channels={expected} ({kind.get(int(expected), 'multi-channel')}); allowed: "
                f"{expected}. Convert the images (e.g. monai.transforms.RepeatChanneld for grayscale -> RGB) or use a "
                f"model trained with in_channels={image.shape[1]}."
            )
        divisor = int(getattr(module, "size_divisor", 1))
        if any(s % divisor for s in image.shape[2:]):
            raise ValueError(
                f"image size {tuple(image.shape[2:])} must be divisible by the network's size_divisor={divisor}; "
                "resize or pad first."
            )
        owner = type(self).__name__
        if image.is_complex():
            raise TypeError(f"{owner}: inputs must be real-valued images, got dtype {image.dtype}.")
        if not image.is_floating_point():
            low, high = self.value_range
            lo, hi = (float(image.min()), float(image.max())) if image.numel() else (low, high)
            if lo < low or hi > high:
                raise TypeError(
                    f"{owner}: inputs have dtype {image.dtype} with values in [{lo:g}, {hi:g}] but value_range="
                    f"{self.value_range} (mapped to [-1, 1] as in training) must hold an integer image. Scale and "
                    "convert it in preprocessing (e.g. monai.transforms.ScaleIntensityRanged(a_min=0, a_max=255, "
                    "b_min=0, b_max=1) and EnsureTyped(dtype=torch.float32)), or set value_range to the training "
                    "range (e.g. (0, 255) for raw uint8 images)."
                )
        image = image.float()
        check_finite(image, "inputs", owner, names)
        return image

    def _both(
        self, network: Callable[..., Any], x_t: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        module = unwrap_network(network)
        if hasattr(module, "lesion") and hasattr(module, "healthy"):
            out = network(x_t, t, *args, **kwargs)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError("a DiffSegPair-like network must return (lesion x0, healthy x0).")
            return out[0], out[1]
        if self.healthy_network is None:
            raise ValueError(
                "DiffusionDifferenceInferer needs two models: pass a monai_diffseg.networks.nets.DiffSegPair as "
                "network, or the lesion model as network and healthy_network=... at construction."
            )
        return network(x_t, t, *args, **kwargs), self.healthy_network(x_t, t, *args, **kwargs)

    @torch.no_grad()
    def compute(
        self, inputs: torch.Tensor | Sequence[torch.Tensor], network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """
        Run the diffusion difference and return every intermediate.

        Args:
            inputs: images ``(N, C, *S)`` (or a list of ``(C, *S)``) in ``value_range``.
            network: a :class:`~monai_diffseg.networks.nets.DiffSegPair`, or the lesion model (``healthy_network``).
            args, kwargs: extra arguments passed to every network call.

        Returns:
            dict of ``(N, T, 1, *S)`` ``"difference"`` (raw ``D``), ``"score"`` (lesion score in ``[0, 1]``) and
            ``"mask"`` (``{0, 1}``), and ``"threshold"`` (the score threshold of every map, ``(N, T)``).
        """
        image = self._check_inputs(inputs, unwrap_network(network))
        n, spatial, device = image.shape[0], image.shape[2:], image.device
        x0 = image_to_diffusion(image, self.value_range)
        num_steps = len(self.timesteps)
        chunk = num_steps if self.step_batch_size is None else min(self.step_batch_size, num_steps)
        diffs = []
        for start in range(0, num_steps, chunk):
            steps = self.timesteps[start : start + chunk]
            seeds = range(self.seed + start, self.seed + start + len(steps))
            # one draw per step, shared by every image: an image's maps do not depend on its batch or position there
            one = (1, *x0.shape[1:])
            noise = torch.cat([torch.randn(one, generator=torch.Generator().manual_seed(s)) for s in seeds])
            noise = noise.repeat_interleave(n, dim=0)  # step-major rows, as x_t
            t = torch.tensor(steps, device=device, dtype=torch.long).repeat_interleave(n)  # step-major rows
            a = self.scheduler.alphas_cumprod.to(device)[t].float().reshape(-1, *([1] * (x0.ndim - 1)))
            x_t = a.sqrt() * torch.cat([x0] * len(steps)) + (1 - a).sqrt() * noise.to(device)
            lesion_out, healthy_out = self._both(network, x_t, t, *args, **kwargs)
            # the outputs as x_0 by the scheduler's prediction_type (unclipped: these are images, not masks)
            n_lesion = x_t - prediction_to_x0(lesion_out.float(), x_t, t, self.scheduler, clip=False)
            n_healthy = x_t - prediction_to_x0(healthy_out.float(), x_t, t, self.scheduler, clip=False)
            diffs.append(grayscale(n_healthy) - self.lesion_weight * grayscale(n_lesion))
        diff = torch.cat(diffs)  # (T * N, 1, *S), step-major
        check_finite(
            diff.reshape(num_steps, n, -1).transpose(0, 1),
            "the difference maps",
            type(self).__name__,
            hint="the images were finite, so a network returned NaN/Inf (damaged weights: check the checkpoints).",
        )
        smoothed = gaussian_blur(diff, self.smooth_sigma) if self.smooth_sigma > 0 else diff
        flat = smoothed.reshape(smoothed.shape[0], -1)
        if self.normalization == "minmax":
            lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        else:
            lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99], device=device), dim=1, keepdim=True)
        norm = ((flat - lo) / (hi - lo).clamp_min(1e-8)).clamp(0.0, 1.0)
        score = 1.0 - norm if self.polarity == "dark" else norm
        fixed = self.threshold_method == "fixed"
        thr = torch.full((score.shape[0],), self.threshold, device=device) if fixed else otsu_threshold(score)
        mask = (score >= thr[:, None] if fixed else score > thr[:, None]).float()

        def stack(x: torch.Tensor) -> torch.Tensor:  # (T * N, ...) step-major -> (N, T, 1, *S)
            return x.reshape(num_steps, n, 1, *spatial).transpose(0, 1).contiguous()

        return {
            "difference": stack(diff),
            "score": stack(score),
            "mask": stack(mask),
            "threshold": thr.reshape(num_steps, n).T.contiguous(),
        }
