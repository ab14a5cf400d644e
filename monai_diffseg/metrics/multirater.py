# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Per-case multi-rater scores: Dice of the fused mask to every rater, and the Hungarian-matched IoU of the ensemble.

:class:`MultiRaterScores` is a ``case_scores`` callable of :class:`~monai_diffseg.handlers.CaseMetricsWriter`, which
itself scores the GED^2 of the ensemble against all raters (``reference_key``) and the Dice to the majority mask
(``label_key``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.metrics import compute_dice
from monai.utils import convert_to_tensor

from .hungarian_iou import compute_hungarian_matched_iou

__all__ = ["MultiRaterScores", "compute_per_rater_dice"]


def compute_per_rater_dice(pred: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
    """
    Dice of one binary prediction to each of ``R`` binary rater masks (both empty: 1, as in the bundles' ``dice``).

    Args:
        pred: binary prediction ``(1, *S)`` (one structure).
        raters: binary rater masks ``(R, *S)``.

    Returns:
        float tensor ``(R,)``.

    Raises:
        ValueError: when the spatial shapes differ or ``pred`` has more than one channel.
    """
    p = convert_to_tensor(pred, dtype=torch.float32, track_meta=False)
    r = convert_to_tensor(raters, dtype=torch.float32, track_meta=False).to(p.device)
    if p.shape[0] != 1 or p.shape[1:] != r.shape[1:]:
        raise ValueError(
            f"compute_per_rater_dice: pred must be (1, *S) and raters (R, *S) with the same spatial shape, got pred "
            f"{tuple(p.shape)} and raters {tuple(r.shape)}; invert the preprocessing (Invertd) before scoring."
        )
    y_pred = p.expand(r.shape[0], *p.shape[1:]).unsqueeze(1)  # (R, 1, *S)
    return compute_dice(y_pred, r.unsqueeze(1), include_background=True, ignore_empty=False)[:, 0]


class MultiRaterScores:
    """
    Per-case scores against ``R`` raters, for :class:`~monai_diffseg.handlers.CaseMetricsWriter`'s ``case_scores``:

    - ``dice_raters``: mean over raters of the Dice of the fused mask ``pred_key`` to each rater (original size), and
      ``dice_rater<k>`` for rater ``k = 1 .. R`` in the data list's order (``rater1``..., QUBIQ ``seg01``..., LIDC
      ``l0`` is rater 1);
    - ``hm_iou``: Hungarian-matched IoU (:func:`~monai_diffseg.metrics.compute_hungarian_matched_iou`, ``matching``)
      of the ensemble members ``samples_key`` ``(E, 1, *S')`` thresholded at ``threshold`` against the rater stack
      ``reference_key`` ``(R, 1, *S')`` at the network size. A one-member ensemble (a U-Net) is matched to every
      rater in turn (``"tile"``: the mean IoU of its mask with each rater), so it is scored by the same path.

    A case without raters gives no scores (unlabelled inference).

    Args:
        raters_key: key of the rater stack ``(R, *S)`` at the prediction's size.
        pred_key: key of the binary fused prediction ``(1, *S)``.
        samples_key: key of the ensemble probabilities ``(E, 1, *S')``.
        reference_key: key of the rater ensemble ``(R, 1, *S')`` at the samples' size.
        threshold: member probability from which a pixel is foreground.
        matching: ``"tile"`` (default) or ``"rectangular"``, see :func:`compute_hungarian_matched_iou`.
    """

    def __init__(
        self,
        raters_key: str = "raters",
        pred_key: str = "pred",
        samples_key: str = "samples",
        reference_key: str = "raters_net",
        threshold: float = 0.5,
        matching: str = "tile",
    ) -> None:
        self.raters_key, self.pred_key = raters_key, pred_key
        self.samples_key, self.reference_key = samples_key, reference_key
        self.threshold, self.matching = threshold, matching

    def __call__(self, item: Mapping[str, Any]) -> dict[str, float | None]:
        scores: dict[str, float | None] = {}
        raters, pred = item.get(self.raters_key), item.get(self.pred_key)
        if raters is not None and pred is not None:
            dice = compute_per_rater_dice(pred, raters)
            scores["dice_raters"] = float(dice.mean())
            scores.update({f"dice_rater{k}": float(v) for k, v in enumerate(dice.tolist(), start=1)})
        samples, ref = item.get(self.samples_key), item.get(self.reference_key)
        if samples is not None and ref is not None:
            s = convert_to_tensor(samples, dtype=torch.float32, track_meta=False)
            r = convert_to_tensor(ref, dtype=torch.float32, track_meta=False).to(s.device)
            hard, r = (s >= self.threshold).float()[None], (r > 0.5).float()[None]
            scores["hm_iou"] = float(compute_hungarian_matched_iou(hard, r, matching=self.matching)[0])
        return scores
