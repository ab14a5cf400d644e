# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Shared helpers of :mod:`monai_diffseg.metrics`: input checks, pairwise IoU, per-image reduction, base class."""

from __future__ import annotations

import warnings

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, look_up_option

__all__ = [
    "REFERENCES_LAYOUT",
    "SAMPLES_LAYOUT",
    "PerImageMetric",
    "check_ensemble",
    "check_samples_and_references",
    "compute_pairwise_iou",
    "reduce_per_image",
    "select_classes",
]

SAMPLES_LAYOUT = "(N, E, C, H, W[, D])"
REFERENCES_LAYOUT = "(N, R, C, H, W[, D])"


def check_ensemble(x: torch.Tensor, name: str, layout: str, values: str = "binary") -> None:
    """Validate one ensemble tensor ``x`` ``(N, K, C, H[, W, D])`` with values in {0, 1} (``values="binary"``) or
    [0, 1] (``"unit"``); the ``ValueError`` (not a real tensor, fewer than 4 dimensions, an empty dimension, NaN, values
    outside the set) names it by ``name`` and ``layout`` (e.g. ``"(N, E, C, H, W[, D])"``)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}.")
    if x.ndim < 4:
        raise ValueError(
            f"{name} must have shape {layout} (at least 4 dimensions: batch, ensemble, channel, spatial), "
            f"got shape {tuple(x.shape)} with {x.ndim} dimensions."
        )
    if 0 in x.shape[1:]:
        raise ValueError(
            f"{name} must contain at least one member along dim 1 of {layout} and non-empty channel and spatial "
            f"dimensions, got shape {tuple(x.shape)}."
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
    binary = values == "binary"
    allowed, kind = ("{0, 1}", "binary") if binary else ("[0, 1]", "probabilities")
    bad = (x != 0) & (x != 1) if binary else ~((x >= 0) & (x <= 1))
    if bool(bad.any()):
        hint = (
            "; threshold soft predictions first, e.g. with monai.transforms.AsDiscrete(threshold=0.5)" if binary else ""
        )
        raise ValueError(
            f"{name} (shape {tuple(x.shape)}, dtype {x.dtype}) must be {kind} with values in {allowed}, got "
            f"{int(bad.sum())} elements outside {allowed} (min {x.min().item()}, max {x.max().item()}){hint}."
        )


def select_classes(x: torch.Tensor, include_background: bool) -> torch.Tensor:
    """``x`` ``(N, K, C, H, W[, D])``, or ``x[:, :, 1:]`` without the background channel unless
    ``include_background`` (ignored, with a warning, when ``C == 1``)."""
    if include_background:
        return x
    if x.shape[2] == 1:
        warnings.warn("single channel input, include_background=False ignored.", stacklevel=3)
        return x
    return x[:, :, 1:]


def check_samples_and_references(
    samples: torch.Tensor, references: torch.Tensor, include_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate binary ``samples`` ``(N, E, C, H, W[, D])`` and ``references`` ``(N, R, C, H, W[, D])``
    (:func:`check_ensemble`; ``ValueError`` also if they differ in batch size, channels, spatial shape or device) and
    return both after :func:`select_classes`."""
    check_ensemble(samples, "samples", SAMPLES_LAYOUT)
    check_ensemble(references, "references", REFERENCES_LAYOUT)
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
    return select_classes(samples, include_background), select_classes(references, include_background)


def compute_pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """
    IoU of every member of ensemble ``a`` ``(N, A, C, H, W[, D])`` with every member of ``b`` ``(N, B, C, H, W[, D])``:
    float64 ``(N, C, A, B)`` with ``IoU(a[n, i, c], b[n, j, c])`` at ``[n, c, i, j]``. The binary (bool or {0, 1})
    inputs are not validated (the ``compute_*`` functions do that).

    One batched matrix product of the flattened masks, in float64 so that voxel counts (up to :math:`2^{53}`) are
    exact. Two empty masks have IoU 1 (they agree); an empty mask against a non-empty one has IoU 0.
    """
    n, na, c = a.shape[:3]
    fa = a.reshape(n, na, c, -1).transpose(1, 2).to(torch.float64)  # (N, C, A, P)
    fb = b.reshape(n, b.shape[1], c, -1).transpose(1, 2).to(torch.float64)  # (N, C, B, P)
    inter = torch.matmul(fa, fb.transpose(-1, -2))  # (N, C, A, B)
    union = fa.sum(-1).unsqueeze(-1) + fb.sum(-1).unsqueeze(-2) - inter  # integer counts: clamp_min(1) is exact
    return torch.where(union == 0, 1.0, inter / union.clamp_min(1.0))


def reduce_per_image(f: torch.Tensor, reduction: MetricReduction | str) -> torch.Tensor:
    """
    Apply a MONAI :class:`~monai.utils.enums.MetricReduction` (``"none"``: unchanged) to per-image values ``f``
    ``(N,)`` or ``(N, C)``; ``"mean"``/``"sum"`` give 0-dim, ``"*_batch"`` ``(C,)`` (0-dim for 1-D ``f``),
    ``"*_channel"`` ``(N,)``.
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


class PerImageMetric(CumulativeIterationMetric):
    """
    Base of the cumulative metrics that buffer per-image values and reduce them with ``reduction``
    (:py:class:`monai.utils.enums.MetricReduction`) in :meth:`aggregate`.

    Subclasses implement ``_compute_tensor`` returning ``(N,)`` (or ``(N, C)``) values, or, when ``result_keys``
    is set, a list of such tensors in that order; then ``__call__`` and :meth:`aggregate` return dicts keyed by
    ``result_keys``. ``requires_y`` makes a missing ``y`` an error; ``call_hint`` names the inputs in the error
    raised when :meth:`aggregate` is called before any data was buffered.
    """

    result_keys: tuple[str, ...] | None = None
    requires_y: bool = True
    call_hint: str = "(samples, references)"

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        self.reduction = look_up_option(reduction, MetricReduction)

    def __call__(  # type: ignore[override]
        self, y_pred: torch.Tensor | list[torch.Tensor], y: torch.Tensor | list[torch.Tensor] | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Compute and buffer the per-image values ``(N,)`` of samples ``y_pred`` ``(N, E, C, H, W[, D])`` and
        references ``y`` ``(N, R, C, H, W[, D])`` (or lists of ``(E, C, ...)`` / ``(R, C, ...)`` tensors);
        ``ValueError`` when ``y`` is required and missing."""
        if self.requires_y and y is None:
            raise ValueError("y (reference annotations, shape (N, R, C, H, W[, D])) is required, got None.")
        ret = super().__call__(y_pred=y_pred, y=y)
        return ret if self.result_keys is None else dict(zip(self.result_keys, ret))  # type: ignore[arg-type]

    def aggregate(  # type: ignore[override]
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Reduce the buffered values with ``reduction`` (default: the one given at construction): a scalar for
        ``"mean"``/``"sum"``, ``(N_total,)`` for ``"none"``; ``ValueError`` when nothing has been buffered yet."""
        data = self.get_buffer()
        keys = self.result_keys
        if not (isinstance(data, torch.Tensor) if keys is None else isinstance(data, list) and len(data) == len(keys)):
            raise ValueError(
                f"nothing to aggregate ({type(data).__name__} buffered) — call the metric on {self.call_hint} "
                "before aggregate()."
            )
        red = reduction if reduction is not None else self.reduction
        if keys is None:
            return reduce_per_image(data, red)
        return {k: reduce_per_image(v, red) for k, v in zip(keys, data)}
