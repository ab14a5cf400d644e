# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Dynamic conditional encoding: state-adaptive fusion of image-condition and noisy-mask features."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

__all__ = ["ConditionFusion"]


class ConditionFusion(nn.Module):
    """
    Fuse image-condition features ``c`` into noisy-mask features ``h`` at one scale.

    MedSegDiff (Wu et al. 2022, arXiv:2211.00611, Sec. 2.1) fuses the two streams with an attentive-like product
    ``LN(h) * LN(c) * c``: the affinity between the current (noisy) segmentation state and the image features
    decides which condition features pass, so the fusion adapts to the diffusion state at every step. Here::

        c' = Conv1x1(c)                                  # condition projected to h's width
        out = h + c' + Conv1x1(LN(h) * LN(c') * c')      # additive path + state-adaptive attentive path

    ``LN`` is a size-agnostic layer norm over channels and space (``GroupNorm(1, C)``). The additive path hands the
    precomputed condition straight to the light denoiser; the attentive path lets the noisy state gate it.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of the noisy-mask features ``h``.
        cond_channels: channels of the condition features ``c``.

    Shapes:
        ``h``: ``(N, channels, *S)``; ``c``: ``(N, cond_channels, *S)`` -> ``(N, channels, *S)``.
    """

    def __init__(self, spatial_dims: int, channels: int, cond_channels: int) -> None:
        super().__init__()
        self.proj = Convolution(spatial_dims, cond_channels, channels, kernel_size=1, conv_only=True)
        self.norm_h = nn.GroupNorm(1, channels)
        self.norm_c = nn.GroupNorm(1, channels)
        self.out = Convolution(spatial_dims, channels, channels, kernel_size=1, conv_only=True)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if h.shape[2:] != c.shape[2:]:
            raise ValueError(
                f"ConditionFusion: noisy-mask features {tuple(h.shape)} and condition features {tuple(c.shape)} "
                "must have the same spatial shape."
            )
        c = self.proj(c)
        affinity = self.norm_h(h) * self.norm_c(c)
        return h + c + self.out(affinity * c)
