# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Vertical cup-to-disc ratio (vCDR), the glaucoma measure of the REFUGE challenge, and its absolute error.

``vCDR = vertical extent of the cup / vertical extent of the disc``, extents counted in rows (``max - min + 1`` of the
rows the structure touches). Conventions for empty structures (documented in the fundus bundle's README):

- no disc: the vCDR is undefined (``NaN``);
- a disc without cup: ``vCDR = 0``;
- error ``|vCDR_pred - vCDR_ref|``: undefined (``NaN``, left out of means) when the reference has no disc; when the
  prediction misses a disc the reference has, the worst error any prediction could make, ``max(vCDR_ref,
  1 - vCDR_ref)`` (a missed disc is not silently dropped from the mean).

Reference: Orlando et al., "REFUGE Challenge: A unified framework for evaluating automated methods for glaucoma
assessment from fundus photographs", Medical Image Analysis 59, 2020 (vCDR mean absolute error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from monai.utils import convert_to_tensor

__all__ = ["CupToDiscRatioScores", "vertical_cup_to_disc_ratio", "vertical_extent", "vcdr_absolute_error"]


def vertical_extent(mask: torch.Tensor, vertical_axis: int = -1) -> torch.Tensor:
    """
    Number of rows between the first and the last row holding foreground (inclusive), 0 when empty.

    Args:
        mask: ``(..., *S)`` binary masks with 2 spatial dims at the end; foreground where > 0.5.
        vertical_axis: the image's vertical spatial axis, ``-1`` (last) or ``-2``. MONAI's ``PILReader`` (and
            :class:`monai_diffseg.transforms.LoadImage2D`) load 2D images as ``(C, W, H)``: the vertical axis is the
            last one (``-1``); for arrays read as ``(H, W)`` (PIL, numpy), pass ``-2``.

    Returns:
        ``(...)`` float tensor of extents.
    """
    if vertical_axis not in (-1, -2):
        raise ValueError(f"vertical_axis must be -1 or -2 (one of the last two spatial axes), got {vertical_axis}.")
    fg = convert_to_tensor(mask, track_meta=False) > 0.5
    rows = fg.any(dim=-2 if vertical_axis == -1 else -1)  # (..., R): does row r hold foreground
    n = rows.shape[-1]
    idx = torch.arange(n, device=rows.device).expand_as(rows)
    first = torch.where(rows, idx, n).min(dim=-1).values
    last = torch.where(rows, idx, -1).max(dim=-1).values
    return (last - first + 1).clamp_min(0).float()


def vertical_cup_to_disc_ratio(
    mask: torch.Tensor, disc_channel: int = 0, cup_channel: int = 1, vertical_axis: int = -1
) -> torch.Tensor:
    """
    vCDR of multi-label masks ``(..., C, *S)`` (2 spatial dims): ``extent(cup) / extent(disc)``; ``NaN`` without disc,
    0 for a disc without cup. ``vertical_axis`` as in :func:`vertical_extent`. Returns ``(...)``.
    """
    m = convert_to_tensor(mask, track_meta=False)
    if m.ndim < 3 or m.shape[-3] <= max(disc_channel, cup_channel):
        raise ValueError(
            f"mask must be (..., C, *S) with channels disc={disc_channel} and cup={cup_channel}, got shape "
            f"{tuple(m.shape)}."
        )
    disc = vertical_extent(m[..., disc_channel, :, :], vertical_axis)
    cup = vertical_extent(m[..., cup_channel, :, :], vertical_axis)
    return torch.where(disc > 0, cup / disc.clamp_min(1.0), torch.full_like(disc, float("nan")))


def vcdr_absolute_error(pred_vcdr: torch.Tensor, ref_vcdr: torch.Tensor) -> torch.Tensor:
    """``|pred - ref|`` elementwise with the module's conventions: ``NaN`` where the reference is undefined (no
    disc); ``max(ref, 1 - ref)`` where only the prediction is undefined (missed disc)."""
    pred, ref = torch.as_tensor(pred_vcdr, dtype=torch.float64), torch.as_tensor(ref_vcdr, dtype=torch.float64)
    worst = torch.maximum(ref, 1.0 - ref).clamp_min(0.0)
    return torch.where(torch.isnan(pred), worst, (pred - ref).abs())  # NaN ref propagates to NaN either way


class CupToDiscRatioScores:
    """
    Per-case vCDR scores for :class:`monai_diffseg.handlers.CaseMetricsWriter` (``case_scores=[...]``): from a case's
    post-processed dict, ``{"vcdr_pred", "vcdr_ref", "vcdr_error"}`` (``None`` where undefined; ``vcdr_ref`` and
    ``vcdr_error`` only when a label is present).

    Args:
        pred_key: binary multi-label prediction ``(C, *S)`` at the label's size.
        label_key: binary multi-label reference ``(C, *S)``.
        disc_channel, cup_channel: channels of the disc and the cup.
        vertical_axis: see :func:`vertical_extent` (``-1`` for images loaded by MONAI's ``PILReader``).
        prefix: prefix of the score names.
    """

    def __init__(
        self,
        pred_key: str = "pred",
        label_key: str = "label",
        disc_channel: int = 0,
        cup_channel: int = 1,
        vertical_axis: int = -1,
        prefix: str = "vcdr",
    ) -> None:
        self.pred_key, self.label_key = pred_key, label_key
        self.channels = {"disc_channel": int(disc_channel), "cup_channel": int(cup_channel)}
        self.vertical_axis = vertical_axis
        self.prefix = prefix

    def __call__(self, item: Mapping[str, Any]) -> dict[str, float | None]:
        def value(x: torch.Tensor) -> float | None:
            v = float(x)
            return None if math.isnan(v) else v

        pred = vertical_cup_to_disc_ratio(item[self.pred_key], vertical_axis=self.vertical_axis, **self.channels)
        scores = {f"{self.prefix}_pred": value(pred)}
        label = item.get(self.label_key)
        if label is not None:
            ref = vertical_cup_to_disc_ratio(label, vertical_axis=self.vertical_axis, **self.channels)
            scores[f"{self.prefix}_ref"] = value(ref)
            scores[f"{self.prefix}_error"] = value(vcdr_absolute_error(pred, ref))
        return scores
