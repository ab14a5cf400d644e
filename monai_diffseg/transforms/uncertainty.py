# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Voxel-wise uncertainty maps of diffusion-model ensembles.

Every transform maps ensemble samples ``(E, C, H, W[, D])`` of foreground probabilities in ``[0, 1]`` (or a sequence
of ``E`` ``(C, H, W[, D])`` members) to a map ``(C, H, W[, D])`` (``(1, H, W[, D])`` for the categorical
``multi_class`` variants) that keeps the input's ``MetaTensor`` metadata, so the maps can be inverted (``Invertd``)
and saved (``SaveImaged``) like a prediction.

References:
    - Wolleb et al., "Diffusion Models for Implicit Image Segmentation Ensembles", MIDL 2022 (variance maps).
    - Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning", 2011 (BALD / MI).
    - Gal, "Uncertainty in Deep Learning", PhD thesis, 2016 (predictive entropy and mutual information).
    - Shuai et al., "DiffSeg: A Segmentation Model for Skin Lesions Based on Diffusion Difference", 2024
      (consistent and ambiguous regions of the generated masks).
"""

from __future__ import annotations

import torch
from monai.transforms.transform import Transform
from monai.utils import TransformBackends

from monai_diffseg.transforms.fusion import SamplesLike, check_ensemble_samples, to_output

__all__ = [
    "binary_entropy",
    "categorical_entropy",
    "EnsembleVariance",
    "PredictiveEntropy",
    "MutualInformation",
    "ConsistentRegion",
    "AmbiguousRegion",
    "UNCERTAINTY_MAPS",
]


def binary_entropy(prob: torch.Tensor) -> torch.Tensor:
    """
    Element-wise binary entropy in nats, ``-p log p - (1 - p) log(1 - p)`` with ``0 log 0 = 0``: probabilities in
    ``[0, 1]`` of any shape -> entropy in ``[0, log 2]`` of the same shape.
    """
    prob = prob.clamp(0.0, 1.0)
    return -(torch.xlogy(prob, prob) + torch.xlogy(1.0 - prob, 1.0 - prob))


def categorical_entropy(prob: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """
    Entropy in nats of a categorical distribution along ``dim``, ``-sum_c p_c log p_c`` with ``0 log 0 = 0``:
    class probabilities summing to one along ``dim`` -> entropy in ``[0, log C]``, with ``dim`` kept as size 1.
    """
    prob = prob.clamp(0.0, 1.0)
    return -torch.xlogy(prob, prob).sum(dim=dim, keepdim=True)


class _EnsembleMap(Transform):
    """Base of the maps: validate the samples, :py:meth:`_compute` the map of ``(E, C, ...)``, keep the metadata."""

    backend = [TransformBackends.TORCH]

    def __call__(self, samples: SamplesLike) -> torch.Tensor:
        img, data = check_ensemble_samples(samples)
        return to_output(self._compute(data), img)

    def _compute(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"subclass {self.__class__.__name__} must implement this method.")


class _RegionMap(_EnsembleMap):
    """Base of the region maps, binary ``(C, ...)`` floats from the members binarised at ``threshold``."""

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got threshold={threshold}.")
        self.threshold = float(threshold)


class EnsembleVariance(_EnsembleMap):
    """
    Voxel-wise variance of the member probabilities ``(E, C, ...) -> (C, ...)``.

    Args:
        unbiased: use the unbiased estimator (divide by ``E - 1``; a single member gives zeros). Defaults to the
            population variance (divide by ``E``), whose maximum is ``0.25`` for probabilities.
    """

    def __init__(self, unbiased: bool = False) -> None:
        self.unbiased = unbiased

    def _compute(self, data: torch.Tensor) -> torch.Tensor:
        if self.unbiased and data.shape[0] < 2:
            return torch.zeros_like(data[0])
        return data.var(dim=0, correction=1 if self.unbiased else 0)


class PredictiveEntropy(_EnsembleMap):
    """
    Entropy (nats) of the mean prediction ``p_mean = mean_e p_e``, the total predictive uncertainty.

    Args:
        multi_class: ``False`` (default): each channel is an independent foreground probability and the binary
            entropy ``H(p_mean)`` is computed per channel -> ``(C, ...)``, in ``[0, log 2]``. ``True``: the channels
            are mutually exclusive class probabilities (softmax output, including background) and the categorical
            entropy ``-sum_c p_mean_c log p_mean_c`` is returned -> ``(1, ...)``, in ``[0, log C]``.
    """

    def __init__(self, multi_class: bool = False) -> None:
        self.multi_class = multi_class

    def _compute(self, data: torch.Tensor) -> torch.Tensor:
        mean = data.mean(dim=0)
        return categorical_entropy(mean, dim=0) if self.multi_class else binary_entropy(mean)


class MutualInformation(_EnsembleMap):
    """
    Mutual information between the prediction and the ensemble member (BALD), in nats:
    ``MI = H(mean_e p_e) - mean_e H(p_e)``, the part of the predictive entropy due to disagreement between members
    (epistemic uncertainty); zero where all members predict the same probability. Round-off negatives are clamped to
    zero. ``multi_class`` as in :py:class:`PredictiveEntropy` (output ``(C, ...)`` or ``(1, ...)``).
    """

    def __init__(self, multi_class: bool = False) -> None:
        self.multi_class = multi_class

    def _compute(self, data: torch.Tensor) -> torch.Tensor:
        mean = data.mean(dim=0)
        if self.multi_class:
            total, expected = categorical_entropy(mean, dim=0), categorical_entropy(data, dim=1).mean(dim=0)
        else:
            total, expected = binary_entropy(mean), binary_entropy(data).mean(dim=0)
        return (total - expected).clamp_min(0.0)


class ConsistentRegion(_RegionMap):
    """
    Voxels where all members predict foreground (``p_e >= threshold`` for every ``e``) -> ``1.``, else ``0.``: the
    intersection of the binarised members, DiffSeg's "consistent" region. ``threshold`` as in :class:`AmbiguousRegion`.
    """

    def _compute(self, data: torch.Tensor) -> torch.Tensor:
        return (data >= self.threshold).all(dim=0).to(data.dtype)


class AmbiguousRegion(_RegionMap):
    """
    Voxels where the binarised members disagree (some foreground, some background) -> ``1.``, else ``0.``: the union
    minus the intersection of the binarised members (never a single member), the "ambiguous" region of DiffSeg.

    Args:
        threshold: probability from which a member's voxel is foreground (inclusive).
    """

    def _compute(self, data: torch.Tensor) -> torch.Tensor:
        fg = data >= self.threshold
        return (fg.any(dim=0) & ~fg.all(dim=0)).to(data.dtype)


#: names accepted by :py:class:`monai_diffseg.transforms.ensemble_postprocess.EnsembleUncertaintyd` (``maps``).
UNCERTAINTY_MAPS: tuple[str, ...] = ("variance", "entropy", "mutual_information", "consistent", "ambiguous")
