# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Generalized energy distance (GED) between an ensemble of sampled segmentations and a set of reference annotations.

The standard distribution-level metric of stochastic segmentation models (Probabilistic U-Net, PHiSeg, BerDiff,
CIMD). With the distance :math:`d(A, B) = 1 - \\mathrm{IoU}(A, B)` it reads

.. math::

    D^2_{GED}(P_{gt}, P_{pred}) = 2\\,\\mathbb{E}[d(S, Y)] - \\mathbb{E}[d(S, S')] - \\mathbb{E}[d(Y, Y')],

where :math:`S, S'` are samples of the model and :math:`Y, Y'` are reference annotations.

References:
    - Székely & Rizzo, "Energy statistics: A class of statistics based on distances", Journal of Statistical
      Planning and Inference, 2013.
    - Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018.
    - Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical Image Segmentation", MICCAI 2019.
    - Chen et al., "BerDiff: Conditional Bernoulli Diffusion Model for Medical Image Segmentation", MICCAI 2023.
    - Rahman et al., "Ambiguous Medical Image Segmentation using Diffusion Models" (CIMD), CVPR 2023.
"""

from __future__ import annotations

import torch
from monai.utils import MetricReduction, look_up_option

from .utils import PerImageMetric, check_samples_and_references, compute_pairwise_iou

__all__ = ["GED_KEYS", "GeneralizedEnergyDistanceMetric", "compute_generalized_energy_distance"]

#: Keys of the dicts returned by :func:`compute_generalized_energy_distance` and the metric, in buffer order.
GED_KEYS: tuple[str, ...] = ("ged", "ged_sqrt", "cross", "sample_diversity", "reference_diversity")

_CLASS_REDUCTIONS = ("mean", "none")


def compute_generalized_energy_distance(
    samples: torch.Tensor,
    references: torch.Tensor,
    include_background: bool = True,
    reduction_over_classes: str = "mean",
) -> dict[str, torch.Tensor]:
    """
    Compute the squared generalized energy distance :math:`D^2_{GED}` (see the module docstring) and its three terms
    per image, with ``d = 0`` when both masks are empty and ``d = 1`` when exactly one is.

    Each expectation is the mean over **all ordered pairs, including i = j** (the convention of the PHiSeg, BerDiff
    and CIMD evaluation code), e.g. the sample term is the mean of the full ``E x E`` distance matrix whose diagonal is
    0. For multi-class inputs ``d`` is computed per class channel and then averaged over the (selected) classes
    (``reduction_over_classes="mean"``) — because the GED is linear in ``d`` this equals the class-average of the
    per-class GED terms, which ``reduction_over_classes="none"`` returns.

    Some papers (e.g. Kohl et al. 2018, PHiSeg) report :math:`D^2_{GED}` itself, others its square root: both are
    returned (the root of :math:`\\max(D^2_{GED}, 0)`, the clamp guarding against tiny negative rounding errors).

    Args:
        samples: binary samples of the model, shape ``(N, E, C, H, W[, D])``, bool or numeric with values in {0, 1}.
        references: binary reference annotations, shape ``(N, R, C, H, W[, D])`` (``R >= 1`` annotators).
        include_background: whether to include class channel 0; ignored (with a warning) when ``C == 1``.
        reduction_over_classes: ``"mean"`` (default) averages the distances over the selected classes, giving
            per-image values of shape ``(N,)``; ``"none"`` keeps them per class, shape ``(N, C')``.

    Returns:
        dict of float64 tensors ``(N,)`` (or ``(N, C')``): ``"ged"`` :math:`D^2_{GED}`, ``"ged_sqrt"``
        :math:`\\sqrt{\\max(D^2_{GED}, 0)}`, ``"cross"`` :math:`\\mathbb{E}[d(S, Y)]`, ``"sample_diversity"``
        :math:`\\mathbb{E}[d(S, S')]` and ``"reference_diversity"`` :math:`\\mathbb{E}[d(Y, Y')]`.

    Raises:
        ValueError: on non-binary, NaN, wrongly shaped, empty or mismatching inputs, or an unknown
            ``reduction_over_classes``.
    """
    reduction_over_classes = look_up_option(reduction_over_classes, _CLASS_REDUCTIONS)
    s, r = check_samples_and_references(samples, references, include_background)

    terms = [(1.0 - compute_pairwise_iou(a, b)).mean(dim=(-2, -1)) for a, b in ((s, r), (s, s), (r, r))]  # (N, C')
    if reduction_over_classes == "mean":
        terms = [t.mean(1) for t in terms]
    cross, sample_div, reference_div = terms
    ged = 2.0 * cross - sample_div - reference_div
    return dict(zip(GED_KEYS, (ged, ged.clamp_min(0.0).sqrt(), cross, sample_div, reference_div)))


class GeneralizedEnergyDistanceMetric(PerImageMetric):
    """
    Cumulative :func:`compute_generalized_energy_distance` (definition and conventions there).

    Each call ``metric(y_pred=samples, y=references)`` with ``samples`` ``(N, E, C, H, W[, D])`` and ``references``
    ``(N, R, C, H, W[, D])`` (or lists of ``(E, C, ...)`` / ``(R, C, ...)`` tensors) returns the per-image terms as a
    dict (see :data:`GED_KEYS`) and buffers them; ``E`` and ``R`` may change between iterations. :meth:`aggregate`
    reduces every term over all buffered images.

    Args:
        include_background: see :func:`compute_generalized_energy_distance`.
        reduction_over_classes: see :func:`compute_generalized_energy_distance`.
        reduction: MONAI reduction (:py:class:`monai.utils.enums.MetricReduction`) of the buffered per-image values
            in :meth:`aggregate`; ``"mean"`` (default) or ``"none"``. ``"ged_sqrt"`` is reduced like the other terms:
            the default aggregate is the mean over images of the per-image square root.
    """

    result_keys = GED_KEYS

    def __init__(
        self,
        include_background: bool = True,
        reduction_over_classes: str = "mean",
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__(reduction)
        self.include_background = include_background
        self.reduction_over_classes = look_up_option(reduction_over_classes, _CLASS_REDUCTIONS)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per-image GED terms of samples ``y_pred`` and references ``y``, in the order of :data:`GED_KEYS`."""
        out = compute_generalized_energy_distance(
            y_pred, y, include_background=self.include_background, reduction_over_classes=self.reduction_over_classes
        )
        return [out[k] for k in GED_KEYS]
