# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""FF-Parser: a learnable filter in the Fourier domain (MedSegDiff, Wu et al. 2022, arXiv:2211.00611, Sec. 2.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

__all__ = ["FFParser"]


class FFParser(nn.Module):
    """
    Frequency-domain feature parser: ``irfftn(rfftn(h) * W)`` with a learnable complex, per-channel weight ``W``.

    MedSegDiff applies it to the noisy-mask features to damp the high-frequency components that the diffusion
    noise injects before they are fused with the image condition. Two things differ from the public reference
    code, on purpose:

    - the weight starts at ``1 + 0j`` so the block is the identity at initialisation (the reference starts near zero,
      which wipes the features out at the start of training);
    - the weight lives on a fixed, frequency-centred grid (``weight_size``) and is resampled (bilinear/trilinear)
      to the spectrum of whatever input arrives, so one trained model takes any input size (the reference ties it
      to 256 px). Because the grid is centred (``fftshift``), a given weight entry always refers to the same
      relative frequency whatever the input size.

    The transform runs in float32 even under autocast: ``torch.fft`` on half precision only accepts power-of-two
    sizes on CUDA.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        channels: number of feature channels ``C``.
        weight_size: size of the learnable frequency grid per spatial dim (the last dim stores ``size // 2 + 1``
            non-negative frequencies, as ``rfftn`` does). Defaults to 16 per dim.

    Shapes:
        input ``(N, C, H, W[, D])`` -> output of the same shape and dtype.
    """

    def __init__(self, spatial_dims: int, channels: int, weight_size: Sequence[int] | int = 16) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"FFParser: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.channels = channels
        size = ensure_tuple_rep(weight_size, spatial_dims)
        grid = (*size[:-1], size[-1] // 2 + 1)
        self.weight_real = nn.Parameter(torch.ones(channels, *grid))
        self.weight_imag = nn.Parameter(torch.zeros(channels, *grid))
        self._mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]

    def _weight(self, freq_shape: Sequence[int]) -> torch.Tensor:
        """Resample the centred weight grid to ``freq_shape`` and move the zero frequency back to index 0."""
        full_dims = tuple(range(1, self.spatial_dims))  # all but the last (half-spectrum) dim are full spectra
        weights = []
        for w in (self.weight_real, self.weight_imag):
            if tuple(w.shape[1:]) != tuple(freq_shape):
                w = F.interpolate(w[None], size=tuple(freq_shape), mode=self._mode, align_corners=True)[0]
            weights.append(torch.fft.ifftshift(w, dim=full_dims) if full_dims else w)
        return torch.complex(weights[0].float(), weights[1].float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"FFParser expected {self.channels} channels, got input of shape {tuple(x.shape)}.")
        dims = tuple(range(2, 2 + self.spatial_dims))
        spatial = x.shape[2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfftn(x.float(), dim=dims, norm="ortho")
            spectrum = spectrum * self._weight(spectrum.shape[2:])
            out = torch.fft.irfftn(spectrum, s=spatial, dim=dims, norm="ortho")
        return out.to(x.dtype)
