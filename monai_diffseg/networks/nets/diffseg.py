# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""DiffSeg image denoisers: an unconditional x0-predicting image diffusion U-Net and the lesion/healthy pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample
from monai.networks.nets import DiffusionModelUNet

from monai_diffseg.utils import batch_item_names, check_finite, check_floating, check_timesteps

__all__ = ["DiffSegDenoiser", "DiffSegPair", "DIFFSEG_CONFIGS"]

#: Named configurations (parameters for 2D RGB, ``stem_stride=2``).
DIFFSEG_CONFIGS: dict[str, dict] = {
    "tiny": {"channels": (16, 32, 64), "num_res_blocks": 1},
    "small": {"channels": (32, 64, 128), "num_res_blocks": 1},
    "base": {"channels": (64, 128, 256, 256), "num_res_blocks": 2, "attention_levels": (False, False, False, True)},
}


class DiffSegDenoiser(nn.Module):
    """
    Unconditional image diffusion denoiser for DiffSeg (Shuai et al., "DiffSeg: A Segmentation Model for Skin Lesions
    Based on Diffusion Difference", 2024, arXiv:2404.16474): ``x0_hat = network(x_t, t)``, the clean image predicted
    from the noised image (x0-prediction, as in the paper's models), 2D or 3D, any number of image channels.

    The core is MONAI's :class:`~monai.networks.nets.DiffusionModelUNet`. With ``stem_stride=2`` (default) a strided
    convolution halves the resolution first and a narrow full-resolution head (nearest upsampling, concatenation
    with ``x_t``, two 3x3 convolutions) predicts ``x0``: about ``2 ** spatial_dims`` times cheaper per step, losing
    fine detail the (smooth, lesion-scale) difference map does not need. ``stem_stride=1``: the plain U-Net.
    Configurations (:data:`DIFFSEG_CONFIGS`): ``tiny`` (default, CPU-trainable), ``small``, ``base`` (GPU).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (3 for RGB, 1 for grayscale); the output has the same channels.
        channels, num_res_blocks, norm_num_groups, num_head_channels: ``DiffusionModelUNet``'s (widths per level,
            finest first; resnet blocks per level; GroupNorm groups, dividing every width; channels per head).
        attention_levels: per level, whether to use self-attention (default: none, for speed).
        stem_stride: 1 or 2, see above.

    Shapes:
        ``x``: ``(N, in_channels, *S)``, every spatial size divisible by :attr:`size_divisor`; ``timesteps``: ``(N,)``
        (or a scalar tensor); returns ``(N, in_channels, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 8,
        num_head_channels: int = 16,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"DiffSegDenoiser: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"DiffSegDenoiser: in_channels must be >= 1, got {in_channels}.")
        if stem_stride not in (1, 2):
            raise ValueError(f"DiffSegDenoiser: stem_stride must be 1 or 2, got {stem_stride}.")
        if len(channels) < 1 or any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"DiffSegDenoiser: norm_num_groups={norm_num_groups} must divide every entry of channels {tuple(channels)}."
            )
        levels = len(channels)
        attention = (False,) * levels if attention_levels is None else tuple(attention_levels)
        if len(attention) != levels:
            raise ValueError(f"DiffSegDenoiser: attention_levels {attention} needs one entry per level ({levels}).")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.stem_stride = stem_stride
        self.size_divisor = stem_stride * 2 ** (levels - 1)  # every input spatial size must be a multiple of it

        inner_channels = channels[0] if stem_stride > 1 else in_channels
        self.stem: nn.Module = (
            Convolution(spatial_dims, in_channels, inner_channels, strides=stem_stride, kernel_size=3, conv_only=True)
            if stem_stride > 1
            else nn.Identity()
        )
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=inner_channels,
            out_channels=inner_channels,
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=attention,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        self.head: nn.Module | None = None
        if stem_stride > 1:
            head_ch = max(channels[0] // 2, 8)
            self.upsample = UpSample(
                spatial_dims, inner_channels, inner_channels, scale_factor=stem_stride, mode="nontrainable",
                interp_mode="nearest", align_corners=None,
            )  # fmt: skip
            self.head = nn.Sequential(
                Convolution(spatial_dims, inner_channels + in_channels, head_ch, kernel_size=3, conv_only=True),
                nn.SiLU(),
                Convolution(spatial_dims, head_ch, in_channels, kernel_size=3, conv_only=True),
            )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """
        The predicted clean image ``x_0`` ``(N, in_channels, *S)`` from the noised image ``x`` ``(N, in_channels, *S)``
        at diffusion steps ``timesteps`` ``(N,)`` (a scalar tensor is broadcast). Raises a ``ValueError`` for a wrong
        shape or size, NaN/Inf in ``x`` or a negative timestep, a ``TypeError`` for an integer ``x`` (the same checks
        as :meth:`MedSegDiff.forward <monai_diffseg.networks.nets.MedSegDiff.forward>`).
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiffSegDenoiser expects x of shape (N, {self.in_channels}, {', '.join('HWD'[: self.spatial_dims])}), "
                f"got {tuple(x.shape)}; a grayscale image for an RGB model (or the reverse) must be converted first."
            )
        if any(s % self.size_divisor for s in x.shape[2:]):
            raise ValueError(
                f"DiffSegDenoiser: every spatial size must be divisible by {self.size_divisor} "
                f"(stem_stride * 2 ** (levels - 1)), got {tuple(x.shape[2:])}; resize or pad first "
                "(monai.transforms.Resized / DivisiblePadd)."
            )
        x = check_floating(x, "x", "DiffSegDenoiser.forward", self.unet.conv_in.conv.weight.dtype, "a noised image x_t")
        check_timesteps(timesteps, x.shape[0], owner="DiffSegDenoiser.forward")
        check_finite(x, "x", "DiffSegDenoiser.forward", batch_item_names(x))
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        h = self.unet(self.stem(x), timesteps)
        if self.head is None:
            return h
        return self.head(torch.cat([self.upsample(h), x], dim=1))


class DiffSegPair(nn.Module):
    """
    The two DiffSeg semantic models in one module (the ``network`` of
    :class:`monai_diffseg.inferers.DiffusionDifferenceInferer`): ``lesion`` (trained on lesion images) and
    ``healthy`` (initialised from it, trained toward healthy-skin semantics); each can load its own checkpoint.

    Args:
        lesion: the lesion-image denoiser (e.g. :class:`DiffSegDenoiser`).
        healthy: the healthy-skin denoiser, same architecture.

    Shapes:
        ``forward(x_t, t)``: ``x_t`` ``(N, C, *S)``, ``t`` ``(N,)`` -> ``(lesion x0, healthy x0)``, each ``(N, C, *S)``.
    """

    def __init__(self, lesion: nn.Module, healthy: nn.Module) -> None:
        super().__init__()
        self.lesion = lesion
        self.healthy = healthy
        for name in ("in_channels", "size_divisor", "spatial_dims"):
            if hasattr(lesion, name):
                setattr(self, name, getattr(lesion, name))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lesion(x, timesteps), self.healthy(x, timesteps)
