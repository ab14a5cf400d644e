# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Hungarian-matched IoU (HM-IoU) between an ensemble of sampled segmentations and a set of reference annotations.

The samples and the references are matched one-to-one so that the total IoU is maximal (Hungarian algorithm,
Kuhn 1955, via :func:`scipy.optimize.linear_sum_assignment`); the HM-IoU is the mean IoU of the matched pairs.
It rewards an ensemble that covers every annotation mode, complementing the generalized energy distance.

References:
    - Kohl et al., "A Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities", arXiv:1905.13077, 2019.
    - Zbinden et al., "Stochastic Segmentation with Conditional Categorical Diffusion Models", ICCV 2023.
    - Rahman et al., "Ambiguous Medical Image Segmentation using Diffusion Models" (CIMD), CVPR 2023.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.utils import MetricReduction, look_up_option
from scipy.optimize import linear_sum_assignment

from .utils import PerImageMetric, check_samples_and_references, compute_pairwise_iou

__all__ = ["HungarianMatchedIoUMetric", "compute_hungarian_matched_iou"]

_MATCHINGS = ("tile", "rectangular")


def compute_hungarian_matched_iou(
    samples: torch.Tensor,
    references: torch.Tensor,
    include_background: bool = True,
    matching: str = "tile",
) -> torch.Tensor:
    """
    Hungarian-matched IoU between ``E`` samples and ``R`` references, per image (see the module docstring).

    The ``E x R`` IoU matrix comes from :func:`~monai_diffseg.metrics.compute_pairwise_iou` (both-empty pairs have
    IoU 1; multi-class inputs average the IoU over the selected class channels).

    ``matching`` handles ``E != R`` (both options coincide when ``E == R``):

    - ``"tile"`` (default; Kohl et al. 2019 match e.g. 16 samples against the 4 annotations repeated 4 times): both
      sets are replicated to ``K = lcm(E, R)`` members and the mean over all ``K`` matched pairs is returned, so every
      sample and every reference takes part equally. The cost grows as ``O(K^3)``: prefer a small least common
      multiple (e.g. ``E`` a multiple of ``R``).
    - ``"rectangular"``: the ``E x R`` problem is solved directly; only ``min(E, R)`` pairs are matched and averaged.

    Args:
        samples: binary samples of the model, shape ``(N, E, C, H, W[, D])``.
        references: binary reference annotations, shape ``(N, R, C, H, W[, D])``.
        include_background: whether to include class channel 0; ignored (with a warning) when ``C == 1``.
        matching: ``"tile"`` (default) or ``"rectangular"``, see above.

    Returns:
        float64 tensor of shape ``(N,)`` with values in [0, 1] (higher is better), on the device of ``samples``.

    Raises:
        ValueError: on non-binary, NaN, wrongly shaped, empty or mismatching inputs, or an unknown ``matching``.
    """
    matching = look_up_option(matching, _MATCHINGS)
    s, r = check_samples_and_references(samples, references, include_background)

    iou = compute_pairwise_iou(s, r).mean(dim=1).cpu().numpy()  # (N, E, R)
    n, e, nr = iou.shape
    if matching == "tile":
        k = e * nr // math.gcd(e, nr)
        iou = np.tile(iou, (1, k // e, k // nr))  # (N, K, K)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        rows, cols = linear_sum_assignment(iou[i], maximize=True)
        out[i] = iou[i][rows, cols].mean()
    return torch.from_numpy(out).to(samples.device)


class HungarianMatchedIoUMetric(PerImageMetric):
    """
    Cumulative :func:`compute_hungarian_matched_iou`: each call ``metric(y_pred=samples, y=references)`` (shapes
    and lists as in :class:`~monai_diffseg.metrics.GeneralizedEnergyDistanceMetric`) returns and buffers the
    per-image values ``(N,)``.

    Args:
        include_background: see :func:`compute_hungarian_matched_iou`.
        matching: ``"tile"`` (default) or ``"rectangular"``, handling of ``E != R``.
        reduction: MONAI reduction (:py:class:`monai.utils.enums.MetricReduction`) in :meth:`aggregate`;
            ``"mean"`` (default) or ``"none"`` (per-image values).
    """

    def __init__(
        self,
        include_background: bool = True,
        matching: str = "tile",
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__(reduction)
        self.include_background = include_background
        self.matching = look_up_option(matching, _MATCHINGS)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-image HM-IoU ``(N,)`` of samples ``y_pred`` and references ``y``."""
        return compute_hungarian_matched_iou(y_pred, y, self.include_background, self.matching)
