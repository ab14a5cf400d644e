# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Generalized energy distance (GED) between an ensemble of sampled segmentations and a set of reference annotations.

The GED is the standard distribution-level metric for stochastic / probabilistic segmentation models
(Probabilistic U-Net, PHiSeg, diffusion segmentation models such as BerDiff and CIMD). With the distance
:math:`d(A, B) = 1 - \\mathrm{IoU}(A, B)` it reads

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

#: Keys of the dictionaries returned by :func:`compute_generalized_energy_distance` and
#: :class:`GeneralizedEnergyDistanceMetric`, in buffer order.
GED_KEYS: tuple[str, ...] = ("ged", "ged_sqrt", "cross", "sample_diversity", "reference_diversity")

_CLASS_REDUCTIONS = ("mean", "none")


def compute_generalized_energy_distance(
    samples: torch.Tensor,
    references: torch.Tensor,
    include_background: bool = True,
    reduction_over_classes: str = "mean",
) -> dict[str, torch.Tensor]:
    """
    Compute the squared generalized energy distance :math:`D^2_{GED}` and its three terms per image.

    With :math:`d(A, B) = 1 - \\mathrm{IoU}(A, B)` (``d = 0`` when both masks are empty, ``d = 1`` when exactly one
    is empty)::

        GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]

    Each expectation is the mean over **all ordered pairs, including i = j** (the convention of the PHiSeg, BerDiff
    and CIMD evaluation code), e.g. the sample term is the mean of the full ``E x E`` distance matrix whose diagonal is
    0. For multi-class inputs ``d`` is computed per class channel and then averaged over the (selected) classes
    (``reduction_over_classes="mean"``) — because the GED is linear in ``d`` this equals the class-average of the
    per-class GED terms, which ``reduction_over_classes="none"`` returns.

    Some papers (e.g. Kohl et al. 2018, PHiSeg) report :math:`D^2_{GED}` itself, others its square root; both are
    returned, as ``"ged"`` and ``"ged_sqrt"`` (:math:`\\sqrt{\\max(D^2_{GED}, 0)}`, the clamp guarding against tiny
    negative values from rounding).

    Args:
        samples: binary samples of the model, shape ``(N, E, C, H, W[, D])`` (``E`` samples per image);
            bool or numeric tensor with values in {0, 1}.
        references: binary reference annotations, shape ``(N, R, C, H, W[, D])`` (``R >= 1`` annotators).
        include_background: whether to include class channel 0. Defaults to ``True``; ignored (with a warning)
            when ``C == 1``.
        reduction_over_classes: ``"mean"`` (default) averages the distances over the selected classes, giving
            per-image values of shape ``(N,)``; ``"none"`` keeps them per class, shape ``(N, C')``.

    Returns:
        dict of float64 tensors of shape ``(N,)`` (or ``(N, C')``) with keys

        - ``"ged"``: :math:`D^2_{GED}`,
        - ``"ged_sqrt"``: :math:`\\sqrt{\\max(D^2_{GED}, 0)}`,
        - ``"cross"``: :math:`\\mathbb{E}[d(S, Y)]`,
        - ``"sample_diversity"``: :math:`\\mathbb{E}[d(S, S')]`,
        - ``"reference_diversity"``: :math:`\\mathbb{E}[d(Y, Y')]`.

    Raises:
        ValueError: on non-binary, NaN, wrongly shaped, empty or mismatching inputs, or an unknown
            ``reduction_over_classes``.

    Example:

    .. code-block:: python

        samples = (torch.rand(2, 8, 1, 64, 64) > 0.5)  # 8 samples per image
        references = (torch.rand(2, 4, 1, 64, 64) > 0.5)  # 4 annotators
        out = compute_generalized_energy_distance(samples, references)
        out["ged"].shape  # torch.Size([2])
    """
    reduction_over_classes = look_up_option(reduction_over_classes, _CLASS_REDUCTIONS)
    s, r = check_samples_and_references(samples, references, include_background)

    cross = (1.0 - compute_pairwise_iou(s, r)).mean(dim=(-2, -1))  # (N, C')
    sample_div = (1.0 - compute_pairwise_iou(s, s)).mean(dim=(-2, -1))
    reference_div = (1.0 - compute_pairwise_iou(r, r)).mean(dim=(-2, -1))
    if reduction_over_classes == "mean":
        cross, sample_div, reference_div = cross.mean(1), sample_div.mean(1), reference_div.mean(1)
    ged = 2.0 * cross - sample_div - reference_div
    return {
        "ged": ged,
        "ged_sqrt": ged.clamp_min(0.0).sqrt(),
        "cross": cross,
        "sample_diversity": sample_div,
        "reference_diversity": reference_div,
    }


class GeneralizedEnergyDistanceMetric(PerImageMetric):
    """
    Cumulative squared generalized energy distance between model samples and reference annotations.

    See :func:`compute_generalized_energy_distance` for the definition and conventions (1 - IoU distance,
    both-empty pairs have distance 0, expectations over all ordered pairs including ``i = j``).

    Each call ``metric(y_pred=samples, y=references)`` with ``samples`` of shape ``(N, E, C, H, W[, D])`` and
    ``references`` of shape ``(N, R, C, H, W[, D])`` (or lists of ``(E, C, H, W[, D])`` / ``(R, C, H, W[, D])``
    tensors) returns the per-image terms as a dict (see :data:`GED_KEYS`) and buffers them; the ensemble sizes
    ``E`` and ``R`` may change between iterations. :meth:`aggregate` reduces every term over all buffered images.

    Example:

    .. code-block:: python

        metric = GeneralizedEnergyDistanceMetric()
        for batch in loader:
            samples = sample_ensemble(batch["image"])  # (N, E, C, H, W) binary
            metric(y_pred=samples, y=batch["annotations"])  # (N, R, C, H, W)
        result = metric.aggregate()  # {"ged": tensor(...), "ged_sqrt": ..., "cross": ..., ...}
        metric.reset()

    Args:
        include_background: whether to include class channel 0. Defaults to ``True``.
        reduction_over_classes: ``"mean"`` (default, per-image values ``(N,)``) or ``"none"`` (per-image,
            per-class values ``(N, C')``).
        reduction: MONAI reduction mode applied by :meth:`aggregate` over the buffered per-image values, see
            :py:class:`monai.utils.enums.MetricReduction`; ``"mean"`` (default) gives the mean over all images,
            ``"none"`` the per-image values. Note that ``"ged_sqrt"`` is reduced like the other terms, i.e. the
            default aggregate is the mean over images of the per-image square root.

    References:
        Kohl et al., NeurIPS 2018; Baumgartner et al. (PHiSeg), MICCAI 2019.
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
        """
        Compute the per-image GED terms.

        Args:
            y_pred: binary samples, shape ``(N, E, C, H, W[, D])``.
            y: binary references, shape ``(N, R, C, H, W[, D])``.

        Returns:
            list of tensors in the order of :data:`GED_KEYS`, each of shape ``(N,)`` (or ``(N, C')``).
        """
        out = compute_generalized_energy_distance(
            y_pred, y, include_background=self.include_background, reduction_over_classes=self.reduction_over_classes
        )
        return [out[k] for k in GED_KEYS]
