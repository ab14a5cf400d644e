# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Sample diversity of an ensemble of segmentations: the mean pairwise distance between the samples of one image.

With the ``"1-iou"`` distance this is the :math:`\\mathbb{E}[d(S, S')]` term of the generalized energy distance. With
``"l2"`` it is the mean pairwise root-mean-square difference of (possibly soft) masks, which some public code (e.g.
DiffSeg's evaluation) reports as "GED" although it is a sample-diversity term, not the generalized energy distance.

References:
    - Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018.
    - Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical Image Segmentation", MICCAI 2019.
    - Rahman et al., "Ambiguous Medical Image Segmentation using Diffusion Models" (CIMD), CVPR 2023.
"""

from __future__ import annotations

import math

import torch
from monai.utils import MetricReduction, look_up_option

from .utils import SAMPLES_LAYOUT, PerImageMetric, check_ensemble, compute_pairwise_iou, select_classes

__all__ = ["SampleDiversityMetric", "compute_sample_diversity"]

_DISTANCES = ("1-iou", "l2")


def compute_sample_diversity(
    samples: torch.Tensor, distance: str = "1-iou", include_background: bool = True
) -> torch.Tensor:
    """
    Mean pairwise distance :math:`\\mathbb{E}[d(S, S')]` between the ``E`` samples of each image.

    The mean is over **all** ``E x E`` ordered pairs, including ``i = j`` (distance 0), so ``E = 1`` gives 0 and
    ``"1-iou"`` (``d = 1 - IoU``, 0 when both masks are empty) equals the ``"sample_diversity"`` term of
    :func:`~monai_diffseg.metrics.compute_generalized_energy_distance`. ``"l2"`` is the root-mean-square difference
    :math:`d(A, B) = \\sqrt{\\frac{1}{P}\\sum_p (A_p - B_p)^2}` over the ``P`` spatial elements of a class channel (for
    binary masks ``d^2`` is the fraction of disagreeing pixels). Multi-class inputs: ``d`` is computed per class channel
    and averaged over the (selected) classes.

    Args:
        samples: ensemble of segmentations, shape ``(N, E, C, H, W[, D])``; binary for ``"1-iou"``, values in
            [0, 1] for ``"l2"``.
        distance: ``"1-iou"`` (default) or ``"l2"``.
        include_background: whether to include class channel 0; ignored (with a warning) when ``C == 1``.

    Returns:
        float64 tensor of shape ``(N,)``.

    Raises:
        ValueError: on invalid shapes, empty ensembles, NaN values, values outside the allowed set, or an unknown
            ``distance``.
    """
    distance = look_up_option(distance, _DISTANCES)
    check_ensemble(samples, "samples", SAMPLES_LAYOUT, values="binary" if distance == "1-iou" else "unit")
    s = select_classes(samples, include_background)
    if distance == "1-iou":
        return (1.0 - compute_pairwise_iou(s, s)).mean(dim=(1, 2, 3))
    n, e, c = s.shape[:3]
    flat = s.reshape(n, e, c, -1).transpose(1, 2).reshape(n * c, e, -1).to(torch.float64)  # (N * C, E, P)
    num_pixels = flat.shape[-1]
    # direct (non-Gram) Euclidean distances: exact zeros for identical samples
    dist = torch.cdist(flat, flat, p=2.0, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(num_pixels)
    return dist.reshape(n, c, e, e).mean(dim=(1, 2, 3))


class SampleDiversityMetric(PerImageMetric):
    """
    Cumulative :func:`compute_sample_diversity`: each call ``metric(y_pred=samples)`` with ``samples``
    ``(N, E, C, H, W[, D])`` (or a list of ``(E, C, H, W[, D])`` tensors) returns and buffers the per-image values
    ``(N,)``; ``y`` is accepted for compatibility with MONAI handlers/evaluators and ignored.

    Args:
        distance: ``"1-iou"`` (default, binary masks) or ``"l2"`` (root-mean-square difference, soft masks allowed).
        include_background: see :func:`compute_sample_diversity`.
        reduction: MONAI reduction (:py:class:`monai.utils.enums.MetricReduction`) in :meth:`aggregate`;
            ``"mean"`` (default) or ``"none"`` (per-image values).
    """

    requires_y = False
    call_hint = "samples"

    def __init__(
        self,
        distance: str = "1-iou",
        include_background: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__(reduction)
        self.distance = look_up_option(distance, _DISTANCES)
        self.include_background = include_background

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-image sample diversity ``(N,)`` of ``y_pred``; ``y`` is ignored."""
        return compute_sample_diversity(y_pred, self.distance, self.include_background)
