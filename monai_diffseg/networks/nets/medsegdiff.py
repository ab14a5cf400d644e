# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""MedSegDiff: a diffusion denoiser over the segmentation mask, conditioned on the image."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, SpatialAttentionBlock, UpSample
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample,
    DiffusionUNetResnetBlock,
    get_timestep_embedding,
)
from monai.utils import ensure_tuple_rep, look_up_option

from monai_diffseg.networks.blocks.condition_encoder import AnchorHead, ConditionEncoder
from monai_diffseg.networks.blocks.condition_fusion import ConditionFusion
from monai_diffseg.networks.blocks.ff_parser import FFParser
from monai_diffseg.utils import batch_item_names, check_finite, check_floating, check_timesteps

__all__ = ["MedSegDiff", "MEDSEGDIFF_CONFIGS", "UPSAMPLE_MODES"]

#: Decoder upsampling modes: ``"linear"`` (bilinear/trilinear, default) or ``"nearest"`` (before this option).
UPSAMPLE_MODES = ("linear", "nearest")

#: Named configurations; parameter counts are for 2D, 3 image channels, 1 mask channel.
MEDSEGDIFF_CONFIGS: dict[str, dict] = {
    "tiny": {"channels": (8, 16, 32, 64), "cond_channels": (16, 32, 64, 128), "attention_levels": (False,) * 4},
    "small": {"channels": (16, 32, 64, 128), "cond_channels": (32, 64, 128, 256)},
    "base": {"channels": (32, 64, 128, 256), "cond_channels": (64, 128, 256, 512), "num_res_blocks": 2},
}


class MedSegDiff(nn.Module):
    """
    MedSegDiff denoiser (Wu et al., "MedSegDiff: Medical Image Segmentation with Diffusion Probabilistic Model",
    MIDL 2023, arXiv:2211.00611), 2D or 3D, any number of image channels and mask channels.

    - **condition branch** (:class:`ConditionEncoder`, a U-Net over the image), run once per image by the sampler
      (:meth:`encode_condition`, passed as ``condition`` to every step and member), so the capacity sits here;
      optionally an **anchor head** on it predicts the mask (MedSegDiff's auxiliary output and loss).
    - **denoiser** over the noisy mask ``x_t``, run ``steps x members`` times, so it stays narrow: a U-Net of MONAI
      ``DiffusionUNetResnetBlock`` s with a sinusoidal timestep embedding. At every encoder level the features pass
      the **FF-Parser** (:class:`FFParser`) and are fused with the condition features of the same scale
      (**dynamic conditional encoding**, :class:`ConditionFusion`). Attention (MONAI ``SpatialAttentionBlock``)
      where ``attention_levels`` says. The decoder upsamples linearly with additive skips: nearest upsampling
      (before ``upsample_mode`` existed) copies each coarsest cell into a ``size_divisor``-pixel block that the
      ensemble's entropy/MI maps show as a lattice of boxes (measured on PH2, ``docs/design.md``).

    Parameters of :data:`MEDSEGDIFF_CONFIGS` (2D, 3 image channels, 1 mask channel; in brackets the denoiser's,
    run at every step): ``tiny`` 0.85 M (0.36 M), ``small`` 3.38 M (1.44 M), ``base`` 16.60 M (8.86 M). The public
    reference implementation runs about 100-130 M parameters at every step.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: mask channels: 1 for binary segmentation, ``K`` for ``K``-class one-hot (with background).
        channels: denoiser width per level, finest first; every input spatial size must be divisible by
            :attr:`size_divisor` ``= stem_stride * 2 ** (len(channels) - 1)``.
        cond_channels: condition-branch width per level; same number of levels as ``channels``.
        num_res_blocks: denoiser resnet blocks per level.
        attention_levels: per level, whether the denoiser applies self-attention (default: coarsest level only).
        ff_parser_levels: per level, whether the FF-Parser filters the noisy-mask features before fusion.
        ff_parser_size: size of the FF-Parser's learnable frequency grid (resampled to any input size).
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups in the denoiser (must divide every entry of ``channels``).
        anchor_head: add the auxiliary mask head on the condition branch.
        stem_stride: 1 or 2; with 2 both branches work at half resolution behind a strided convolution (only a
            narrow input/output path at full resolution), about ``2 ** spatial_dims`` times cheaper per step.
        dropout: dropout in the condition branch.
        upsample_mode: decoder upsampling (no parameters), ``"linear"`` (bi/trilinear) or ``"nearest"``. Saved in
            the state dict (buffer ``decoder_upsample_mode``); a loaded checkpoint's mode wins, with a warning when
            it differs; a checkpoint without the entry (saved before the option) loads as ``"nearest"``.
        self_condition: self-conditioning (Chen et al., "Analog Bits", ICLR 2023, arXiv:2208.04202): the denoiser's
            input convolution also takes the previous estimate of the clean mask ``x_self_cond`` (``out_channels``
            more input channels, zeros when not given). Train with
            :class:`monai_diffseg.inferers.DiffusionSegmentationTrainInferer` (it feeds its own no-grad estimate
            half of the time); :class:`monai_diffseg.inferers.DiffusionSegmentationInferer` passes the previous
            step's ``x_0``. ``False`` (default) is the network of checkpoints saved before the option.

    Shapes:
        ``x_t``: ``(B, out_channels, *S)``; ``timesteps``: ``(B,)`` or a scalar tensor; ``image``:
        ``(N, in_channels, *S)``; returns ``(B, out_channels, *S)``. ``B = k * N``, member-major: ``x_t[e * N + n]``
        belongs to image ``n`` (``k`` members per image without tiling the condition).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        cond_channels: Sequence[int] = (32, 64, 128, 256),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] | None = None,
        ff_parser_levels: Sequence[bool] | bool = True,
        ff_parser_size: int = 16,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        anchor_head: bool = True,
        stem_stride: int = 2,
        dropout: float = 0.0,
        upsample_mode: str = "linear",
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"MedSegDiff: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) < 2 or len(cond_channels) != len(channels):
            raise ValueError(
                f"MedSegDiff: channels {tuple(channels)} and cond_channels {tuple(cond_channels)} must have the same "
                "number (>= 2) of levels."
            )
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"MedSegDiff: norm_num_groups={norm_num_groups} must divide every channel {channels}.")
        if stem_stride not in (1, 2):
            raise ValueError(f"MedSegDiff: stem_stride must be 1 or 2, got {stem_stride}.")
        levels = len(channels)
        attention_levels = (False,) * (levels - 1) + (True,) if attention_levels is None else attention_levels
        attention_levels = tuple(attention_levels)
        ff_parser_levels = ensure_tuple_rep(ff_parser_levels, levels)
        if len(attention_levels) != levels or len(ff_parser_levels) != levels:
            raise ValueError(
                f"MedSegDiff: attention_levels {attention_levels} and ff_parser_levels {ff_parser_levels} need one "
                f"entry per level ({levels})."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(channels)
        self.stem_stride = stem_stride
        self.self_condition = bool(self_condition)
        self.size_divisor = stem_stride * 2 ** (levels - 1)

        self.condition_encoder = ConditionEncoder(
            spatial_dims, in_channels, cond_channels, dropout=dropout, stem_stride=stem_stride
        )
        self.anchor_head = (
            AnchorHead(spatial_dims, cond_channels[0], out_channels, scale_factor=stem_stride) if anchor_head else None
        )

        temb_dim = 4 * channels[0]
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        # full-resolution path kept narrow: it runs at every step on every member
        head_ch = max(channels[0] // 2, norm_num_groups)
        in_ch = out_channels * (2 if self.self_condition else 1)  # [x_t, x_self_cond] with self-conditioning
        self.in_conv = Convolution(spatial_dims, in_ch, head_ch, kernel_size=3, conv_only=True)
        self.stem = Convolution(spatial_dims, head_ch, channels[0], strides=stem_stride, kernel_size=3, conv_only=True)

        def resblock(ch: int) -> DiffusionUNetResnetBlock:
            return DiffusionUNetResnetBlock(spatial_dims, ch, temb_dim, ch, norm_num_groups=norm_num_groups)

        def attention(ch: int) -> nn.Module:
            return SpatialAttentionBlock(
                spatial_dims, ch, num_head_channels=min(num_head_channels, ch), norm_num_groups=norm_num_groups
            )

        self.down_res, self.down_attn, self.ff_parsers, self.fusions, self.downsamples = (
            nn.ModuleList() for _ in range(5)
        )
        for lvl, ch in enumerate(channels):  # the stem / previous downsample already maps to this width
            self.down_res.append(nn.ModuleList([resblock(ch) for _ in range(num_res_blocks)]))
            self.down_attn.append(attention(ch) if attention_levels[lvl] else nn.Identity())
            self.ff_parsers.append(
                FFParser(spatial_dims, ch, ff_parser_size) if ff_parser_levels[lvl] else nn.Identity()
            )
            self.fusions.append(ConditionFusion(spatial_dims, ch, cond_channels[lvl]))
            if lvl < levels - 1:
                self.downsamples.append(
                    DiffusionUnetDownsample(spatial_dims, ch, use_conv=True, out_channels=channels[lvl + 1])
                )

        self.mid_res = resblock(channels[-1])

        # decoder with additive skips (cheaper than concatenation at the same width)
        self.up_res, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for lvl in range(levels - 1, -1, -1):
            self.up_res.append(nn.ModuleList([resblock(channels[lvl]) for _ in range(num_res_blocks)]))
            out_ch = channels[lvl - 1] if lvl > 0 else head_ch
            scale = 2 if lvl > 0 else stem_stride
            self.upsamples.append(  # interpolation set by _set_upsample_mode below
                UpSample(spatial_dims, channels[lvl], out_ch, scale, mode="nontrainable")
                if scale > 1 or out_ch != channels[lvl]
                else nn.Identity()
            )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, head_ch),
            nn.SiLU(),
            Convolution(spatial_dims, head_ch, out_channels, kernel_size=3, conv_only=True),
        )
        # index into UPSAMPLE_MODES, so a checkpoint says what it was trained with (a tensor, not `_extra_state`:
        # MONAI's copy_model_state and other state-dict tools expect tensors only)
        self.register_buffer("decoder_upsample_mode", torch.tensor(0, dtype=torch.int64))
        self.upsample_mode = ""
        self._set_upsample_mode(upsample_mode)

    #: state-dict entries this module fills in itself when a checkpoint lacks them (checked loaders skip them)
    optional_state_keys = ("decoder_upsample_mode",)

    def _set_upsample_mode(self, mode: str) -> None:
        """Switch the decoder's (parameter-free) interpolation to ``mode`` (one of :data:`UPSAMPLE_MODES`)."""
        mode = look_up_option(mode, UPSAMPLE_MODES)
        interp = "nearest" if mode == "nearest" else {2: "bilinear", 3: "trilinear"}[self.spatial_dims]
        for module in self.upsamples.modules():
            if isinstance(module, nn.Upsample):
                module.mode = interp
                module.align_corners = None if mode == "nearest" else False
        self.decoder_upsample_mode.fill_(UPSAMPLE_MODES.index(mode))
        self.upsample_mode = mode

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load as usual (``args``: torch's ``local_metadata, strict, missing_keys, unexpected_keys, error_msgs``),
        then adopt the checkpoint's upsampling mode (its weights were trained with it)."""
        key = prefix + "decoder_upsample_mode"
        legacy = key not in state_dict and any(k.startswith(prefix + "upsamples.") for k in state_dict)
        if legacy:  # a full MedSegDiff state dict without the record predates `upsample_mode`: it was nearest
            state_dict[key] = torch.tensor(UPSAMPLE_MODES.index("nearest"))
        elif key in state_dict:
            index = state_dict[key]
            if not (isinstance(index, torch.Tensor) and index.numel() == 1 and 0 <= int(index) < len(UPSAMPLE_MODES)):
                args[-1].append(
                    f"MedSegDiff: state-dict entry '{key}' must be a one-element tensor with an index into "
                    f"{UPSAMPLE_MODES}, got {index!r}: is it the checkpoint of another network?"
                )
                return
        built = self.upsample_mode
        super()._load_from_state_dict(state_dict, prefix, *args)
        mode = UPSAMPLE_MODES[int(self.decoder_upsample_mode)]
        if mode == built:
            return
        if legacy:
            warnings.warn(
                "MedSegDiff: the checkpoint has no decoder_upsample_mode entry, so it was saved before the "
                f"`upsample_mode` option, with nearest upsampling; switching from upsample_mode='{built}' to 'nearest' "
                f"to reproduce it. Nearest draws a {self.size_divisor}-pixel block lattice into the uncertainty maps: "
                "retrain with the default upsample_mode='linear' for smooth maps (docs/design.md).",
                stacklevel=2,
            )
        else:
            warnings.warn(
                f"MedSegDiff: the checkpoint was trained with upsample_mode='{mode}', this network was built with "
                f"'{built}'; using the checkpoint's '{mode}'.",
                stacklevel=2,
            )
        self._set_upsample_mode(mode)

    def _check_shape(self, x: torch.Tensor, name: str, batch: str, channels: int) -> None:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != channels:
            stars = ", ".join("*" * self.spatial_dims)
            raise ValueError(
                f"MedSegDiff: {name} must have shape ({batch}, {channels}, {stars}), got {tuple(x.shape)}."
            )

    def check_input_size(self, spatial_shape: Sequence[int], name: str = "input") -> None:
        """Raise a ValueError unless every spatial size is divisible by :attr:`size_divisor`."""
        if any(int(s) % self.size_divisor for s in spatial_shape):
            raise ValueError(
                f"MedSegDiff: {name} spatial shape {tuple(int(s) for s in spatial_shape)} must be divisible by "
                f"{self.size_divisor} (2 ** {len(self.channels) - 1} downsamplings); pad or resize in preprocessing, "
                f"e.g. monai.transforms.DivisiblePadd(k={self.size_divisor}) or Resized."
            )

    def encode_condition(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """
        Image-condition features of ``image`` ``(N, in_channels, *S)``, once per image: a tuple of ``len(channels)``
        tensors, level ``l``: ``(N, cond_channels[l], *S / (stem_stride * 2**l))``. Raises a ``ValueError`` for a
        wrong shape or NaN/Inf (naming the batch items and their files), a ``TypeError`` for an integer image;
        floating images are cast to the parameters' dtype.
        """
        self._check_shape(image, "image", "N", self.in_channels)
        self.check_input_size(image.shape[2:], "image")
        image = check_floating(image, "image", "MedSegDiff.encode_condition", self.time_embed[0].weight.dtype)
        check_finite(image, "image", "MedSegDiff.encode_condition", batch_item_names(image))
        return self.condition_encoder(image)

    def anchor(self, condition: Sequence[torch.Tensor]) -> torch.Tensor:
        """Auxiliary mask logits ``(N, out_channels, *S)`` from the condition features (needs ``anchor_head=True``)."""
        if self.anchor_head is None:
            raise ValueError("MedSegDiff: this network was built with anchor_head=False; there is no anchor output.")
        return self.anchor_head(condition[0])

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        image: torch.Tensor | None = None,
        condition: Sequence[torch.Tensor] | None = None,
        return_anchor: bool = False,
        x_self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Predict the diffusion target (eps, x0 or v, as trained) for the noisy mask ``x_t``.

        Args:
            x_t: noisy mask ``(B, out_channels, *S)``.
            timesteps: ``(B,)`` integer diffusion steps, or a scalar tensor for all.
            image: ``(N, in_channels, *S)``, ``B % N == 0``; ignored when ``condition`` is given.
            condition: the output of :meth:`encode_condition` (batch ``N``), to skip recomputing it.
            return_anchor: also return the anchor head's mask logits ``(N, out_channels, *S)``. Training uses this
                so that the auxiliary loss goes through ``forward`` (required under DistributedDataParallel).
            x_self_cond: with ``self_condition=True``, the previous estimate of the clean mask ``x_0``
                ``(B, out_channels, *S)`` in ``[-1, 1]``; ``None``: zeros (the first step, or the training pass
                without self-condition). A network without ``self_condition`` rejects it.

        Returns:
            ``(B, out_channels, *S)``, or ``(prediction, anchor_logits)`` when ``return_anchor``.

        Raises:
            ValueError: wrong shapes; NaN/Inf in ``x_t`` or ``image`` (naming the batch items); a negative or
                non-finite timestep (``<= T - 1`` is checked where ``T`` is known, see :func:`check_timesteps`).
            TypeError: an integer ``x_t``/``image``; floating inputs are cast to the parameters' dtype.
        """
        self._check_shape(x_t, "x_t", "B", self.out_channels)
        x_t = check_floating(x_t, "x_t", "MedSegDiff.forward", self.time_embed[0].weight.dtype, "a noisy mask")
        check_timesteps(timesteps, x_t.shape[0], owner="MedSegDiff.forward")
        if condition is None:
            if image is None:
                raise ValueError("MedSegDiff.forward needs either `image` or a precomputed `condition`.")
            condition = self.encode_condition(image)
        self.check_input_size(x_t.shape[2:], "x_t")
        n_cond = condition[0].shape[0]
        expected = tuple(int(d) // self.stem_stride for d in x_t.shape[2:])
        if x_t.shape[0] % n_cond or tuple(condition[0].shape[2:]) != expected:
            raise ValueError(
                f"MedSegDiff: x_t {tuple(x_t.shape)} does not match the condition {tuple(condition[0].shape)}: "
                "the condition must come from an image of the same spatial shape and x_t's batch must be a multiple of the image batch."
            )
        members = x_t.shape[0] // n_cond
        check_finite(
            x_t,
            "x_t",
            "MedSegDiff.forward",
            (lambda r: f"member {r // n_cond} of image {r % n_cond}") if members > 1 else None,
            "x_t is the noisy mask: inside a sampler this means the previous network call returned NaN/Inf (e.g. an "
            "overflow under fp16 autocast: use bf16 or float32) or the initial noise was not finite.",
        )
        cond = [c.repeat(members, *([1] * (c.ndim - 1))) for c in condition] if members > 1 else list(condition)

        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x_t.shape[0])
        emb = self.time_embed(get_timestep_embedding(timesteps, self.channels[0]).to(x_t.dtype))

        if self.self_condition:
            if x_self_cond is None:
                x_self_cond = torch.zeros_like(x_t)
            elif tuple(x_self_cond.shape) != tuple(x_t.shape):
                raise ValueError(
                    f"MedSegDiff: x_self_cond {tuple(x_self_cond.shape)} must have x_t's shape {tuple(x_t.shape)} "
                    "(the previous x0 estimate of the same members)."
                )
            x_t = torch.cat([x_t, x_self_cond.to(x_t.dtype)], dim=1)
        elif x_self_cond is not None:
            raise ValueError(
                "MedSegDiff: x_self_cond was given but this network was built with self_condition=False (its input "
                "convolution takes x_t only); build it with self_condition=True and retrain, or do not pass it."
            )
        full = self.in_conv(x_t)
        h = self.stem(full)
        skips = []
        for lvl, blocks in enumerate(self.down_res):
            for block in blocks:
                h = block(h, emb)
            h = self.down_attn[lvl](h)
            h = self.fusions[lvl](self.ff_parsers[lvl](h), cond[lvl])
            skips.append(h)
            if lvl < len(self.downsamples):
                h = self.downsamples[lvl](h)

        h = self.mid_res(h, emb)

        for i, blocks in enumerate(self.up_res):
            h = h + skips[-1 - i]
            for block in blocks:
                h = block(h, emb)
            h = self.upsamples[i](h)
        h = h + full
        out = self.out(h)
        if return_anchor:
            return out, self.anchor(condition)
        return out
