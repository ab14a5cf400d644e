# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Image-condition encoder: a U-Net over the image that yields multi-scale semantic features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

__all__ = ["AnchorHead", "ConditionEncoder"]


class ConditionEncoder(nn.Module):
    """
    U-Net over the image that returns its decoder (not encoder: semantic context at every scale, including the
    finest) features at every scale, finest first: MedSegDiff's condition branch, run once per image by a sampler.
    Built from MONAI's ``BasicUNet`` blocks (``TwoConv``, ``Down``, ``UpCat``).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: image channels (3 for dermoscopy/fundus, 1 for ultrasound, 4 for BraTS ...).
        channels: feature width per level, finest first; ``len(channels) - 1`` 2x downsamplings.
        act: activation, MONAI ``Act`` spec.
        norm: normalisation, MONAI ``Norm`` spec.
        dropout: dropout ratio inside the conv blocks.
        stem_stride: stride of the first convolution (1 or 2); 2 halves every level's resolution.

    Shapes:
        input ``(N, in_channels, *S)`` with every ``S`` divisible by ``stem_stride * 2 ** (len(channels) - 1)``;
        output: a tuple of ``len(channels)`` tensors, level ``l`` of shape
        ``(N, channels[l], *S / (stem_stride * 2**l))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"ConditionEncoder: channels needs at least 2 levels, got {tuple(channels)}.")
        self.channels = tuple(channels)
        self.stem_stride = stem_stride
        stem: list[nn.Module] = []
        if stem_stride > 1:
            stem.append(Convolution(spatial_dims, in_channels, channels[0], strides=stem_stride, act=act, norm=norm))
        stem_in = channels[0] if stem_stride > 1 else in_channels
        self.stem = nn.Sequential(*stem, TwoConv(spatial_dims, stem_in, channels[0], act, norm, True, dropout))
        pairs = list(zip(channels[:-1], channels[1:]))  # (level i, level i + 1) widths
        self.downs = nn.ModuleList([Down(spatial_dims, a, b, act, norm, True, dropout) for a, b in pairs])
        # UpCat(in, cat, out): upsample level i+1 (width channels[i+1]) and merge with the encoder skip at level i
        self.ups = nn.ModuleList(
            [UpCat(spatial_dims, b, a, a, act, norm, True, dropout, halves=True) for a, b in pairs]
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        skips = [self.stem(image)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        feats = [skips[-1]]
        for i in range(len(self.ups) - 1, -1, -1):
            feats.append(self.ups[i](feats[-1], skips[i]))
        return tuple(reversed(feats))


class AnchorHead(nn.Module):
    """
    MedSegDiff's anchor (auxiliary) output: mask logits ``(N, out_channels, *S)`` from the finest condition features
    ``(N, in_channels, *S / scale_factor)`` (``spatial_dims`` 2 or 3), a 1x1 convolution then linear upsampling by
    ``scale_factor`` (the condition encoder's ``stem_stride``) back to the input resolution.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale_factor: int = 1) -> None:
        super().__init__()
        self.conv = Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True)
        self.scale_factor = scale_factor
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        logits = self.conv(feat)
        if self.scale_factor > 1:
            logits = F.interpolate(logits, scale_factor=self.scale_factor, mode=self.mode, align_corners=False)
        return logits
