# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Loss for mask-diffusion training: diffusion target loss plus an optional auxiliary (anchor) mask loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.utils import look_up_option

__all__ = ["MaskDiffusionLoss"]


class MaskDiffusionLoss(nn.Module):
    """
    ``loss = diffusion_loss(pred, target) + aux_weight * aux_loss(anchor_logits, mask)``.

    MedSegDiff (Wu et al. 2022) trains the denoiser with MSE on the diffusion target, plus a supervised loss on the
    anchor output of its condition branch (MedSegDiff-V2, arXiv:2301.11798). Pairs with
    :class:`~monai_diffseg.engines.MaskDiffusionPrepareBatch` and
    :class:`~monai_diffseg.inferers.DiffusionSegmentationTrainInferer`.

    Args:
        diffusion_loss: ``"mse"`` or ``"l1"`` on the diffusion target (eps, x0 or v).
        aux_weight: weight of the auxiliary loss; 0 disables it.
        aux_loss: loss on the anchor logits vs. the {0, 1} mask; default MONAI ``DiceCELoss`` (sigmoid for one
            channel, softmax for one-hot multi-class).

    Inputs:
        pred: ``(B, C, *S)`` tensor, or a dict ``{"pred": (B, C, *S), "anchor": (N, C, *S)}``.
        target: ``(B, C, *S)`` tensor, or a dict ``{"target": (B, C, *S), "mask": (N, C, *S)}`` and optionally
            ``"weight": (B,)`` per-sample weights of the diffusion loss (e.g. min-SNR,
            :class:`~monai_diffseg.engines.MaskDiffusionPrepareBatch` ``loss_weighting``): the diffusion term is then
            ``mean_b(weight_b * mean_{c,S} err_b)``.
    """

    def __init__(self, diffusion_loss: str = "mse", aux_weight: float = 0.0, aux_loss: nn.Module | None = None) -> None:
        super().__init__()
        self.diffusion_loss = look_up_option(diffusion_loss, ("mse", "l1"))
        self.aux_weight = float(aux_weight)
        self.aux_loss = aux_loss
        self._default_aux: dict[int, nn.Module] = {}

    def forward(
        self, pred: torch.Tensor | Mapping[str, torch.Tensor], target: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        pred_t = pred["pred"] if isinstance(pred, Mapping) else pred
        target_t = target["target"] if isinstance(target, Mapping) else target
        if isinstance(pred_t, Sequence) or pred_t.shape != target_t.shape:
            shape = tuple(pred_t.shape) if isinstance(pred_t, torch.Tensor) else type(pred_t).__name__
            raise ValueError(f"MaskDiffusionLoss: prediction {shape} and target {tuple(target_t.shape)} differ.")
        weight = target.get("weight") if isinstance(target, Mapping) else None
        if weight is None:
            loss = (F.mse_loss if self.diffusion_loss == "mse" else F.l1_loss)(pred_t.float(), target_t.float())
        else:
            if weight.shape != pred_t.shape[:1]:
                raise ValueError(
                    f"MaskDiffusionLoss: target['weight'] must have shape ({pred_t.shape[0]},) (one weight per "
                    f"sample of the prediction {tuple(pred_t.shape)}), got {tuple(weight.shape)}."
                )
            err = (F.mse_loss if self.diffusion_loss == "mse" else F.l1_loss)(
                pred_t.float(), target_t.float(), reduction="none"
            )
            loss = (weight.float() * err.flatten(1).mean(dim=1)).mean()
        if self.aux_weight > 0:
            if not isinstance(pred, Mapping) or "anchor" not in pred or not isinstance(target, Mapping):
                raise ValueError(
                    "MaskDiffusionLoss: aux_weight > 0 needs the anchor logits (network built with anchor_head=True, "
                    "trained through DiffusionSegmentationTrainInferer) and the {0, 1} mask in the targets dict."
                )
            logits, aux = pred["anchor"].float(), self.aux_loss
            if aux is None:
                c = logits.shape[1]
                if c not in self._default_aux:
                    self._default_aux[c] = DiceCELoss(sigmoid=c == 1, softmax=c > 1)
                aux = self._default_aux[c]
            loss = loss + self.aux_weight * aux(logits, target["mask"].float())
        return loss
