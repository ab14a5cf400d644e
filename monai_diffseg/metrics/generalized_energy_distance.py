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

This module also hosts the shared helpers of :mod:`monai_diffseg.metrics` (input validation and the vectorised
pairwise IoU :func:`compute_pairwise_iou`).

References:
    - Székely & Rizzo, "Energy statistics: A class of statistics based on distances", Journal of Statistical
      Planning and Inference, 2013.
    - Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018.
    - Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical Image Segmentation", MICCAI 2019.
    - Chen et al., "BerDiff: Conditional Bernoulli Diffusion Model for Medical Image Segmentation", MICCAI 2023.
    - Rahman et al., "Ambiguous Medical Image Segmentation using Diffusion Models" (CIMD), CVPR 2023.
"""

from __future__ import annotations

import warnings

import torch

from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option

__all__ = [
    "GeneralizedEnergyDistanceMetric",
    "compute_generalized_energy_distance",
    "compute_pairwise_iou",
    "GED_KEYS",
]

#: Keys of the dictionaries returned by :func:`compute_generalized_energy_distance` and
#: :class:`GeneralizedEnergyDistanceMetric`, in buffer order.
GED_KEYS: tuple[str, ...] = ("ged", "ged_sqrt", "cross", "sample_diversity", "reference_diversity")

_CLASS_REDUCTIONS = ("mean", "none")


def _check_ensemble(x: torch.Tensor, name: str, layout: str, values: str = "binary") -> None:
    """
    Validate one ensemble tensor of layout ``(N, K, C, spatial...)``.

    Args:
        x: tensor to validate, shape ``(N, K, C, H[, W, D])``.
        name: argument name used in the error message.
        layout: human-readable layout used in the error message, e.g. ``"(N, E, C, H, W[, D])"``.
        values: ``"binary"`` (values must be in {0, 1}) or ``"unit"`` (values must be in [0, 1]).

    Raises:
        ValueError: if ``x`` is not a tensor, has fewer than 4 dimensions, an empty ensemble / channel / spatial
            dimension, contains NaN or infinite values, or values outside the allowed set.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}.")
    if x.ndim < 4:
        raise ValueError(
            f"{name} must have shape {layout} (at least 4 dimensions: batch, ensemble, channel, spatial), "
            f"got shape {tuple(x.shape)} with {x.ndim} dimensions."
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"{name} must contain at least one member along dim 1 of {layout}, got shape {tuple(x.shape)}."
        )
    if any(s == 0 for s in x.shape[2:]):
        raise ValueError(
            f"{name} must have non-empty channel and spatial dimensions in {layout}, got shape {tuple(x.shape)}."
        )
    if x.is_complex():
        raise ValueError(f"{name} must be a real-valued (bool, integer or floating point) tensor, got dtype {x.dtype}.")
    if x.dtype == torch.bool:
        return
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(
            f"{name} (shape {tuple(x.shape)}) contains NaN values ({int(torch.isnan(x).sum())} elements); "
            "remove or replace them before computing the metric."
        )
    if values == "binary":
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            raise ValueError(
                f"{name} (shape {tuple(x.shape)}, dtype {x.dtype}) must be binary with values in {{0, 1}}, "
                f"got {int(bad.sum())} elements outside {{0, 1}} (min {x.min().item()}, max {x.max().item()}); "
                "threshold soft predictions first, e.g. with monai.transforms.AsDiscrete(threshold=0.5)."
            )
    else:
        bad = ~((x >= 0) & (x <= 1))
        if bool(bad.any()):
            raise ValueError(
                f"{name} (shape {tuple(x.shape)}, dtype {x.dtype}) must have values in [0, 1] (probabilities), "
                f"got {int(bad.sum())} elements outside [0, 1] (min {x.min().item()}, max {x.max().item()})."
            )


def _check_matching_pair(samples: torch.Tensor, references: torch.Tensor) -> None:
    """
    Validate that ``samples`` and ``references`` are compatible (same batch, channel and spatial shape, same device).

    Args:
        samples: binary samples, shape ``(N, E, C, H, W[, D])``.
        references: binary references, shape ``(N, R, C, H, W[, D])``.

    Raises:
        ValueError: if both tensors differ in batch size, number of channels, spatial shape or device.
    """
    if samples.shape[0] != references.shape[0] or samples.shape[2:] != references.shape[2:]:
        raise ValueError(
            "samples (N, E, C, spatial...) and references (N, R, C, spatial...) must share the batch size N, the "
            f"channel count C and the spatial shape, got samples shape {tuple(samples.shape)} and references shape "
            f"{tuple(references.shape)}."
        )
    if samples.device != references.device:
        raise ValueError(
            f"samples and references must be on the same device, got samples on {samples.device} and references on "
            f"{references.device}."
        )


def _select_classes(x: torch.Tensor, include_background: bool) -> torch.Tensor:
    """
    Drop the background channel (index 0 of dim 2) when requested.

    Args:
        x: ensemble tensor, shape ``(N, K, C, H, W[, D])``.
        include_background: whether to keep channel 0.

    Returns:
        ``x`` or ``x[:, :, 1:]``, shape ``(N, K, C', H, W[, D])``.
    """
    if include_background:
        return x
    if x.shape[2] == 1:
        warnings.warn("single channel input, include_background=False ignored.", stacklevel=3)
        return x
    return x[:, :, 1:]


def compute_pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """
    Vectorised IoU between every member of ensemble ``a`` and every member of ensemble ``b``, per image and class.

    The intersections are computed as one batched matrix product of the flattened masks, in float64 so that
    voxel counts (up to :math:`2^{53}`) are exact. A pair of masks that are both empty has IoU 1 (the masks agree);
    an empty mask against a non-empty one has IoU 0.

    Args:
        a: binary masks, shape ``(N, A, C, H, W[, D])``; bool or {0, 1}-valued numeric tensor.
        b: binary masks, shape ``(N, B, C, H, W[, D])``, same ``N``, ``C`` and spatial shape as ``a``.

    Returns:
        float64 tensor of shape ``(N, C, A, B)`` with ``IoU(a[n, i, c], b[n, j, c])`` at ``[n, c, i, j]``.

    Note:
        No validation is performed here; the public ``compute_*`` functions validate their inputs.
    """
    n, na, c = a.shape[:3]
    nb = b.shape[1]
    fa = a.reshape(n, na, c, -1).transpose(1, 2).to(torch.float64)  # (N, C, A, P)
    fb = b.reshape(n, nb, c, -1).transpose(1, 2).to(torch.float64)  # (N, C, B, P)
    inter = torch.matmul(fa, fb.transpose(-1, -2))  # (N, C, A, B)
    union = fa.sum(-1).unsqueeze(-1) + fb.sum(-1).unsqueeze(-2) - inter
    empty = union == 0
    return torch.where(empty, torch.ones_like(inter), inter / torch.where(empty, torch.ones_like(union), union))


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
    _check_ensemble(samples, "samples", "(N, E, C, H, W[, D])")
    _check_ensemble(references, "references", "(N, R, C, H, W[, D])")
    _check_matching_pair(samples, references)
    s = _select_classes(samples, include_background)
    r = _select_classes(references, include_background)

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


def _reduce_per_image(f: torch.Tensor, reduction: MetricReduction | str) -> torch.Tensor:
    """
    Apply a MONAI :class:`~monai.utils.enums.MetricReduction` to per-image values.

    Args:
        f: per-image values, shape ``(N,)`` or ``(N, C)``.
        reduction: reduction mode; ``"none"`` returns ``f`` unchanged.

    Returns:
        reduced tensor (``"mean"``/``"sum"``: 0-dim; ``"*_batch"``: ``(C,)``, or 0-dim for 1-D ``f``;
        ``"*_channel"``: ``(N,)``).
    """
    reduction = look_up_option(reduction, MetricReduction)
    if reduction == MetricReduction.NONE:
        return f
    out, _ = do_metric_reduction(f if f.ndim == 2 else f.unsqueeze(1), reduction)
    if reduction == MetricReduction.MEAN or (
        f.ndim == 1 and reduction in (MetricReduction.MEAN_BATCH, MetricReduction.SUM_BATCH)
    ):
        out = out.reshape(())  # do_metric_reduction keeps a trailing size-1 dimension here
    return out


class _PerImageMetric(CumulativeIterationMetric):
    """
    Base of the cumulative metrics that buffer one value per image and reduce them with ``self.reduction``.

    Subclasses set ``self.reduction`` in ``__init__`` and implement ``_compute_tensor`` returning ``(N,)`` values;
    ``_call_hint`` names the inputs in the error raised when :py:meth:`aggregate` is called too early.
    """

    reduction: MetricReduction | str
    _call_hint = "y_pred"

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        """
        Reduce the buffered per-image values.

        Args:
            reduction: overrides the ``reduction`` given at construction.

        Returns:
            scalar for ``"mean"``/``"sum"``, per-image tensor ``(N_total,)`` for ``"none"``.

        Raises:
            ValueError: when nothing has been buffered yet.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(
                f"the data to aggregate must be a PyTorch Tensor, got {type(data).__name__} — call the metric on "
                f"{self._call_hint} before aggregate()."
            )
        return _reduce_per_image(data, reduction if reduction is not None else self.reduction)


class GeneralizedEnergyDistanceMetric(CumulativeIterationMetric):
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

    def __init__(
        self,
        include_background: bool = True,
        reduction_over_classes: str = "mean",
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.reduction_over_classes = look_up_option(reduction_over_classes, _CLASS_REDUCTIONS)
        self.reduction = look_up_option(reduction, MetricReduction)

    def __call__(  # type: ignore[override]
        self, y_pred: torch.Tensor | list[torch.Tensor], y: torch.Tensor | list[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """
        Compute and buffer the per-image GED terms of one iteration.

        Args:
            y_pred: binary samples, shape ``(N, E, C, H, W[, D])``, or a list of ``(E, C, H, W[, D])`` tensors.
            y: binary references, shape ``(N, R, C, H, W[, D])``, or a list of ``(R, C, H, W[, D])`` tensors.

        Returns:
            dict with the keys of :data:`GED_KEYS`, each of shape ``(N,)`` (or ``(N, C')``).

        Raises:
            ValueError: when ``y`` is missing or the inputs are invalid.
        """
        if y is None:
            raise ValueError("y (reference annotations, shape (N, R, C, H, W[, D])) is required, got None.")
        ret = super().__call__(y_pred=y_pred, y=y)
        return dict(zip(GED_KEYS, ret))  # type: ignore[arg-type]

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
        if y is None:
            raise ValueError("y (reference annotations, shape (N, R, C, H, W[, D])) is required, got None.")
        out = compute_generalized_energy_distance(
            samples=y_pred,
            references=y,
            include_background=self.include_background,
            reduction_over_classes=self.reduction_over_classes,
        )
        return [out[k] for k in GED_KEYS]

    def aggregate(self, reduction: MetricReduction | str | None = None) -> dict[str, torch.Tensor]:
        """
        Reduce the buffered per-image GED terms.

        Args:
            reduction: overrides the ``reduction`` given at construction, see
                :py:class:`monai.utils.enums.MetricReduction`.

        Returns:
            dict with the keys of :data:`GED_KEYS`; scalars for ``"mean"``/``"sum"``, per-image tensors of shape
            ``(N_total,)`` (or ``(N_total, C')``) for ``"none"``.

        Raises:
            ValueError: when nothing has been buffered yet.
        """
        data = self.get_buffer()
        if not isinstance(data, list) or len(data) != len(GED_KEYS):
            raise ValueError(
                f"the buffered data to aggregate must be a list of {len(GED_KEYS)} tensors (one per GED term); "
                f"got {type(data).__name__} — call the metric on (samples, references) before aggregate()."
            )
        red = reduction if reduction is not None else self.reduction
        return {k: _reduce_per_image(v, red) for k, v in zip(GED_KEYS, data)}
