# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Per-case scores meant to rise under domain shift and to track the segmentation error of a mask-diffusion model
whose network has an anchor head on its image-condition branch (:class:`monai_diffseg.networks.nets.MedSegDiff`):

- ``anchor_disagreement``: ``1 - Dice(anchor mask, fused ensemble mask)``: the deterministic condition branch and the
  sampled denoiser read the same image; where the image is unlike the training data they stop agreeing;
- ``ensemble_dice_error``: the ensemble's own estimate of ``1 - Dice`` of its fused mask, the mean over the members'
  masks (and the anchor head's mask, when the network has one) of ``1 - Dice(mask_i, fused mask)``; if the truth were
  drawn like the samples, this would be the expected error of the fused mask;
- ``entropy_per_area``: summed binary entropy of the ensemble mean divided by its predicted foreground area
  (relative boundary uncertainty, as ``entropy_fg`` in ``benchmarks/quality.py``), at the samples' resolution;
- ``input_distance``: distance of the preprocessed network input's acquisition statistics (:func:`input_features`:
  per channel mean, log standard deviation = contrast, log mean gradient magnitude and log mean ``|Laplacian|`` =
  sharpness / noise) to the training images', independent of the network;
- ``feature_distance``: distance of the image's pooled condition features (coarsest level, spatial mean) to the
  training set's.

Both distances are ``mean_d ((f_d - mu_d) / sigma_d) ** 2`` (diagonal Mahalanobis, :func:`compute_feature_distance`)
against statistics of the training images from :func:`shift_statistics` (saved as ``shift_stats.pt`` next to the
bundle's ``model.pt`` at the end of training by :class:`monai_diffseg.handlers.ShiftStatisticsWriter`); they are left
out without them.

The ensemble's own spread (``sample_diversity``, :class:`~monai_diffseg.metrics.SampleDiversityMetric`) is the score
these are compared with in ``benchmarks/domain_shift.py``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.utils import convert_to_tensor

from monai_diffseg.utils import unwrap_network

__all__ = [
    "ShiftScore",
    "SHIFT_SCORES",
    "compute_anchor_disagreement",
    "compute_ensemble_dice_error",
    "compute_entropy_per_area",
    "condition_features",
    "condition_feature_statistics",
    "compute_feature_distance",
    "input_features",
    "shift_statistics",
    "shift_stats_file",
    "SHIFT_STATS_FILENAME",
]

#: names of the per-case scores :class:`ShiftScore` writes
SHIFT_SCORES = ("anchor_disagreement", "ensemble_dice_error", "entropy_per_area", "input_distance", "feature_distance")
#: file name of the training-set statistics next to the bundle's checkpoint
SHIFT_STATS_FILENAME = "shift_stats.pt"


def compute_anchor_disagreement(anchor: torch.Tensor, fused: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """
    ``1 - Dice`` between the anchor's and the fused ensemble's masks (each probability ``>= threshold``), over all
    channels and pixels of each image; 0 when both masks are empty.

    Args:
        anchor: ``(N, C, *S)`` anchor-head foreground probability.
        fused: ``(N, C, *S)`` fused ensemble probability (e.g. the mean of the members).
        threshold: foreground from this probability.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``.
    """
    if anchor.shape != fused.shape or anchor.ndim < 3:
        raise ValueError(
            f"compute_anchor_disagreement: anchor {tuple(anchor.shape)} and fused {tuple(fused.shape)} must both be "
            "(N, C, *S) of the same shape (resize the anchor to the samples' resolution)."
        )
    a = (anchor >= threshold).flatten(1).double()
    b = (fused >= threshold).flatten(1).double()
    return 1.0 - _dice_with_empty(a, b)


def _dice_with_empty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of binary rows ``a`` ``(K, P)`` with ``b`` ``(K, P)`` or ``(1, P)`` (float64); empty vs empty is 1."""
    inter, total = (a * b).sum(1), a.sum(1) + b.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def compute_ensemble_dice_error(
    members: torch.Tensor, fused: torch.Tensor, anchor: torch.Tensor | None = None, threshold: float = 0.5
) -> torch.Tensor:
    """
    The ensemble's own estimate of ``1 - Dice`` of its fused mask for one image: the mean over the members' masks
    (each member probability ``>= threshold``) and, when given, the anchor head's mask of ``1 - Dice(mask_i, fused
    mask)``, the fused mask being ``fused >= threshold`` (``fused``: the members' mean). Dice is taken over all
    channels and pixels; an empty mask against an empty fused mask counts as Dice 1.

    If the ground truth were drawn like the samples (the ensemble calibrated), this is the expected ``1 - Dice`` of
    the fused mask against it: the ensemble's prediction of its own error, rather than of its spread
    (``sample_diversity`` compares members with each other, this compares them with the mask that is reported).

    Args:
        members: ``(E, C, *S)`` member foreground probabilities (or binary masks).
        fused: ``(1, C, *S)`` or ``(C, *S)`` fused probability (the mean of ``members``).
        anchor: optional ``(1, C, *S)`` or ``(C, *S)`` anchor-head probability, counted as one more mask.
        threshold: foreground from this probability.

    Returns:
        0-dim float64 in ``[0, 1]``.
    """
    if members.ndim < 3:
        raise ValueError(f"compute_ensemble_dice_error: members must be (E, C, *S), got {tuple(members.shape)}.")
    shape = tuple(members.shape[1:])
    fused = fused[0] if fused.ndim == members.ndim else fused
    if tuple(fused.shape) != shape:
        raise ValueError(
            f"compute_ensemble_dice_error: fused {tuple(fused.shape)} must be (1, *{shape}) to match the members "
            f"{tuple(members.shape)} (same channels and resolution)."
        )
    masks = members
    if anchor is not None:
        anchor = anchor[0] if anchor.ndim == members.ndim else anchor
        if tuple(anchor.shape) != shape:
            raise ValueError(
                f"compute_ensemble_dice_error: anchor {tuple(anchor.shape)} must be (1, *{shape}) to match the "
                f"members {tuple(members.shape)} (resize the anchor to the samples' resolution)."
            )
        masks = torch.cat([members, anchor[None].to(members)])
    m = (masks >= threshold).flatten(1).double()
    f = (fused >= threshold).flatten().double()[None].to(m.device)
    return (1.0 - _dice_with_empty(m, f)).mean()


def compute_entropy_per_area(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """
    Summed binary entropy (nats) of ``prob`` ``(N, C, *S)`` divided by its foreground area (pixels with
    ``prob >= threshold``, at least 1), per image: ``(N,)`` float64.
    """
    if prob.ndim < 3:
        raise ValueError(f"compute_entropy_per_area: prob must be (N, C, *S), got {tuple(prob.shape)}.")
    p = prob.double().clamp(0.0, 1.0)
    ent = torch.special.entr(p) + torch.special.entr(1.0 - p)
    area = (p >= threshold).flatten(1).sum(1).clamp_min(1)
    return ent.flatten(1).sum(1) / area


def _condition_encoder(network: Any) -> Callable[[torch.Tensor], Any] | None:
    """The (unwrapped) network's ``encode_condition``, or ``None`` for a network without an image-condition branch."""
    encode = getattr(unwrap_network(network), "encode_condition", None) if network is not None else None
    return encode if callable(encode) else None


def _require_condition_encoder(network: Any, owner: str) -> Callable[[torch.Tensor], Any]:
    encode = _condition_encoder(network)
    if encode is None:
        raise ValueError(
            f"{owner}: {type(unwrap_network(network)).__name__} has no encode_condition; the feature distance needs "
            "a network with an image-condition branch (e.g. MedSegDiff)."
        )
    return encode


@torch.no_grad()
def condition_features(network: Any, image: torch.Tensor) -> torch.Tensor:
    """
    Pooled image-condition features ``(N, F)``: the spatial mean of the coarsest level of
    ``network.encode_condition(image)`` (``image``: ``(N, C_in, *S)``), float32.
    """
    coarsest = _require_condition_encoder(network, "condition_features")(image)[-1]
    return coarsest.float().flatten(2).mean(dim=2)


def input_features(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """
    Acquisition statistics of preprocessed network inputs, independent of any network: ``(N, 4 * C_in)`` float64,
    per channel (in this order, each block ``C_in`` long)

    - the mean intensity (brightness);
    - ``log(std + eps)``: contrast (a contrast loss ``(x - m) * c + m`` moves it by ``log c``);
    - ``log(mean |grad x| + eps)``: forward differences along every spatial axis, gradient magnitude
      ``sqrt(sum_d (dx_d) ** 2)`` averaged over the pixels (blur lowers it, noise raises it);
    - ``log(mean |Laplacian x| + eps)``: the discrete Laplacian ``sum_d (x[i+1] - 2 x[i] + x[i-1])`` along every
      spatial axis over the interior pixels (more sensitive to fine detail: blur lowers it strongly, noise and JPEG
      block edges raise it).

    Logarithms make scale changes additive, so a diagonal Mahalanobis distance sees a contrast factor ``c`` as the
    same shift whatever the image's own contrast. Works for 2D and 3D (any number of spatial axes, each >= 3).

    Args:
        image: ``(N, C_in, *S)`` preprocessed images at the network's resolution.
        eps: added inside the logarithms (a constant image stays finite).
    """
    if image.ndim < 3 or min(image.shape[2:]) < 3:
        raise ValueError(
            f"input_features: image must be (N, C_in, *S) with every spatial size >= 3, got {tuple(image.shape)}."
        )
    x = image.double()
    dims = range(2, x.ndim)
    mean = x.flatten(2).mean(2)
    std = x.flatten(2).std(2, unbiased=False)
    # forward differences cropped to the common (S - 1) grid
    grads = [x.diff(dim=d) for d in dims]
    common = [slice(None), slice(None)] + [slice(0, n - 1) for n in x.shape[2:]]
    grad = torch.sqrt(sum(g[tuple(common)] ** 2 for g in grads)).flatten(2).mean(2)
    interior = [slice(None), slice(None)] + [slice(1, n - 1) for n in x.shape[2:]]
    lap = 0.0
    for d in dims:
        idx = list(interior)
        idx[d] = slice(None)  # x.diff(n=2) along d already has the interior length on that axis
        lap = lap + x.diff(n=2, dim=d)[tuple(idx)]
    lap = lap.abs().flatten(2).mean(2)
    return torch.cat([mean, torch.log(std + eps), torch.log(grad + eps), torch.log(lap + eps)], dim=1)


def _stats(values: list[torch.Tensor], eps: float, what: str) -> dict[str, torch.Tensor]:
    all_values = torch.cat(values)
    if all_values.shape[0] < 2:
        raise ValueError(f"shift_statistics: {what} need at least 2 images for a standard deviation.")
    return {"mean": all_values.mean(0), "std": all_values.std(0).clamp_min(eps)}


@torch.no_grad()
def shift_statistics(images: Iterable[torch.Tensor], network: Any | None = None, eps: float = 1e-6) -> dict[str, Any]:
    """
    Training-set statistics for :class:`ShiftScore`: per-feature mean and standard deviation (at least ``eps``) of
    :func:`input_features` and, given a ``network`` with an image-condition branch, of :func:`condition_features`.

    Args:
        images: an iterable of ``(C_in, *S)`` or ``(N, C_in, *S)`` preprocessed images (the bundle's non-random
            preprocessing of the training images, at the network's resolution).
        network: the trained network (its weights as in the checkpoint used at inference), or ``None`` for the input
            statistics only.
        eps: floor of the standard deviations.

    Returns:
        ``{"input": {"mean": (4 C_in,), "std": (4 C_in,)}, "feature": {"mean": (F,), "std": (F,)},
        "num_images": int}`` (``"feature"`` only with a network); save with ``torch.save`` and pass the file to
        :class:`ShiftScore` ``feature_stats``.
    """
    module = unwrap_network(network) if network is not None else None
    has_condition = _condition_encoder(module) is not None
    if module is not None:
        device, spatial_dims = next(module.parameters()).device, int(getattr(module, "spatial_dims", 2))
    else:
        device, spatial_dims = torch.device("cpu"), None
    inputs, feats = [], []
    for image in images:
        x = convert_to_tensor(image, track_meta=False).float()
        if spatial_dims is None:
            spatial_dims = x.ndim - 1  # without a network: the first image fixes (C_in, *S)
        x = x[None] if x.ndim == spatial_dims + 1 else x  # one image (C_in, *S) -> a batch of one
        inputs.append(input_features(x).cpu())
        if has_condition:
            feats.append(condition_features(network, x.to(device)).cpu())
    if not inputs:
        raise ValueError("shift_statistics: no images given.")
    out: dict[str, Any] = {
        "input": _stats(inputs, eps, "the input statistics"),
        "num_images": sum(len(i) for i in inputs),
    }
    if has_condition:
        out["feature"] = _stats(feats, eps, "the condition-feature statistics")
    return out


def condition_feature_statistics(
    network: Any, images: Iterable[torch.Tensor], eps: float = 1e-6
) -> dict[str, torch.Tensor]:
    """
    Per-feature mean and standard deviation of :func:`condition_features` over ``images`` (an iterable of
    ``(C_in, *S)`` or ``(N, C_in, *S)`` tensors, e.g. the preprocessed training images): ``{"mean": (F,), "std":
    (F,)}``, ``std`` at least ``eps``; the ``"feature"`` part of :func:`shift_statistics`.
    """
    _require_condition_encoder(network, "condition_feature_statistics")
    return shift_statistics(images, network, eps)["feature"]


def shift_stats_file(ckpt_path: str | os.PathLike) -> str:
    """The statistics file beside a checkpoint: ``<folder of ckpt_path>/shift_stats.pt`` (may not exist)."""
    return str(Path(ckpt_path).with_name(SHIFT_STATS_FILENAME))


def _load_shift_stats(stats: Mapping[str, Any] | str | os.PathLike | None) -> tuple[Any, Any]:
    """``(input statistics, condition-feature statistics)`` (each ``{"mean", "std"}`` or ``None``)."""
    if stats is None:
        return None, None
    if isinstance(stats, (str, os.PathLike)):
        path = os.fspath(stats)
        if not os.path.isfile(path):
            warnings.warn(
                f"ShiftScore: no training-set statistics at '{path}', so input_distance and feature_distance are left "
                "out. They are written at the end of training (train.json 'train#shift_statistics'); for an existing "
                "checkpoint: python -m monai.bundle run shift_stats --config_file <bundle>/configs/train.json "
                "--dataset_dir <data> --train#shift_statistics#model_file <model.pt>.",
                stacklevel=2,
            )
            return None, None
        stats = torch.load(path, map_location="cpu", weights_only=True)
    if {"mean", "std"} <= set(stats):  # the older condition-feature-only form
        return None, stats
    if not {"input", "feature"} & set(stats):
        raise ValueError(
            f"ShiftScore: feature_stats needs 'input' and/or 'feature' (of shift_statistics) or 'mean' and 'std' (of "
            f"condition_feature_statistics), got {sorted(stats)}."
        )
    for key in ("input", "feature"):
        if key in stats and not {"mean", "std"} <= set(stats[key]):
            raise ValueError(f"ShiftScore: feature_stats['{key}'] needs 'mean' and 'std', got {sorted(stats[key])}.")
    return stats.get("input"), stats.get("feature")


def compute_feature_distance(features: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``mean_d ((f_d - mean_d) / std_d) ** 2`` per row of ``features`` ``(N, F)``: ``(N,)`` float64."""
    mean, std = stats["mean"].to(features.device), stats["std"].to(features.device)
    if features.ndim != 2 or features.shape[1] != mean.numel():
        raise ValueError(
            f"compute_feature_distance: features {tuple(features.shape)} must be (N, {mean.numel()}) to match the "
            "statistics (computed with another network, or for images with another number of channels?)."
        )
    return (((features.double() - mean.double()) / std.double()) ** 2).mean(dim=1)


class ShiftScore:
    """
    Per-case shift scores (:data:`SHIFT_SCORES`) for :class:`monai_diffseg.handlers.CaseMetricsWriter`
    ``case_scores``: called with each case's merged dict after post-processing, it encodes the preprocessed image
    once more (one condition-branch pass, no denoising), reads the anchor head and compares it with the members.

    Args:
        network: the denoiser with ``encode_condition`` and ``anchor`` (MedSegDiff with ``anchor_head=True``); ``None``
            for the scores that need no network (``ensemble_dice_error`` of the members, ``entropy_per_area``,
            ``input_distance``), e.g. behind a coarse-to-fine inferer whose network input is not the case's image.
        image_key: the preprocessed image ``(C_in, *S')`` at the network's resolution.
        samples_key: the ensemble's member probabilities ``(E, C, *S')`` at the same resolution.
        threshold: foreground from this probability.
        feature_stats: the training-set statistics of :func:`shift_statistics` (``{"input", "feature"}``; the older
            ``{"mean", "std"}`` of :func:`condition_feature_statistics` is read as the ``"feature"`` part), or a path
            to them saved with ``torch.save`` (the bundles: :func:`shift_stats_file` of the checkpoint). A path that
            does not exist gives one warning (how to create the file) and, like ``None``, leaves ``input_distance``
            and ``feature_distance`` out.
        multi_label: the channels are independent structures (sigmoid anchor); default: one channel sigmoid, several
            one-hot classes softmax (as the anchor was trained).

    Returns (per call):
        ``{"anchor_disagreement": float, "ensemble_dice_error": float, "entropy_per_area": float[,
        "input_distance": float][, "feature_distance": float]}``; for a network without ``encode_condition`` / anchor head (e.g. a U-Net baseline
        through the same config) ``anchor_disagreement`` is ``None`` and ``ensemble_dice_error`` counts the members
        only.
    """

    def __init__(
        self,
        network: Any,
        image_key: str = "image",
        samples_key: str = "samples",
        threshold: float = 0.5,
        feature_stats: Mapping[str, Any] | str | os.PathLike | None = None,
        multi_label: bool = False,
    ) -> None:
        self.network = network
        self.image_key, self.samples_key = image_key, samples_key
        self.threshold = float(threshold)
        self.input_stats, self.feature_stats = _load_shift_stats(feature_stats)
        self.multi_label = multi_label

    @torch.no_grad()
    def __call__(self, item: Mapping[str, Any]) -> dict[str, float | None]:
        for key in (self.image_key, self.samples_key):
            if key not in item:
                raise ValueError(
                    f"ShiftScore: the case has no '{key}' (keys: {sorted(item)}); the inferer must return the samples "
                    "(return_samples=True, copied to 'samples' before fusion) and the image must stay preprocessed."
                )
        module = unwrap_network(self.network)
        samples = convert_to_tensor(item[self.samples_key], track_meta=False).float()
        fused = samples.mean(dim=0, keepdim=True)
        out: dict[str, float | None] = {
            "anchor_disagreement": None,
            "ensemble_dice_error": None,
            "entropy_per_area": float(compute_entropy_per_area(fused, self.threshold)[0]),
        }
        if self.input_stats is not None:
            x = convert_to_tensor(item[self.image_key], track_meta=False)[None]
            out["input_distance"] = float(compute_feature_distance(input_features(x), self.input_stats)[0])
        if _condition_encoder(module) is None or getattr(module, "anchor_head", None) is None:
            # e.g. a plain U-Net baseline run through the same config: no anchor, no condition features
            out["ensemble_dice_error"] = float(compute_ensemble_dice_error(samples, fused, None, self.threshold))
            return out
        param = next(module.parameters())
        image = convert_to_tensor(item[self.image_key], track_meta=False)[None].to(param.device, param.dtype)
        was_training = module.training
        module.eval()
        try:
            condition = module.encode_condition(image)
            logits = module.anchor(condition).float()
        finally:
            module.train(was_training)
        anchor = torch.softmax(logits, 1) if logits.shape[1] > 1 and not self.multi_label else torch.sigmoid(logits)
        fused = fused.to(anchor.device)
        if anchor.shape != fused.shape:
            raise ValueError(
                f"ShiftScore: anchor {tuple(anchor.shape)} and fused samples {tuple(fused.shape)} differ: "
                f"'{self.image_key}' and '{self.samples_key}' must be at the network's resolution (before Invertd)."
            )
        out["anchor_disagreement"] = float(compute_anchor_disagreement(anchor, fused, self.threshold)[0])
        out["ensemble_dice_error"] = float(
            compute_ensemble_dice_error(samples.to(anchor.device), fused, anchor, self.threshold)
        )
        if self.feature_stats is not None:
            feats = condition[-1].float().flatten(2).mean(dim=2)
            out["feature_distance"] = float(compute_feature_distance(feats, self.feature_stats)[0])
        return out
