# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""FF-Parser: a learnable filter in the Fourier domain (MedSegDiff, Wu et al. 2022, arXiv:2211.00611, Sec. 2.2)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

__all__ = ["FFParser"]


class FFParser(nn.Module):
    """
    Frequency-domain feature parser: ``irfftn(rfftn(h) * W)`` with a learnable complex, per-channel weight ``W``.

    MedSegDiff applies it to the noisy-mask features to damp the high-frequency noise before fusion with the image
    condition. Unlike the public reference code, the weight starts at ``1 + 0j`` (identity at initialisation; the
    reference starts near zero) and lives on a fixed, frequency-centred grid (``weight_size``) resampled linearly to
    any input's spectrum (the reference is tied to 256 px). A grid entry is one frequency in cycles per sample at
    every input size: entry ``j`` of a full dimension is ``(j - n // 2) / n``, of the last (half-spectrum) dimension
    ``j / n``; frequency ``f`` reads the grid at ``f * n + n // 2`` (``f * n`` in the last dimension), clamped.
    The block is a circular convolution, so it cannot draw a pattern locked to positions. Checkpoints without a
    ``grid_version`` entry keep their old mapping (the centred grid interpolated end to end, ``align_corners=True``,
    which misplaced the zero frequency by up to half a cell). The FFT runs in float32 even under autocast
    (half-precision ``torch.fft`` on CUDA needs power-of-two sizes).

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
        self.weight_size = tuple(int(n) for n in size)
        # grid-to-frequency mapping, 1 exact, 0 that of checkpoints saved before this entry; travels with the weights
        self.register_buffer("grid_version", torch.tensor(self.GRID_VERSION, dtype=torch.int64))
        self._legacy_grid = False  # Python mirror of grid_version == 0, so forward has no data-dependent branch

    #: the frequency mapping of new blocks (see the class docstring)
    GRID_VERSION = 1
    #: state-dict entries this module fills in itself when a checkpoint lacks them (checked loaders skip them)
    optional_state_keys = ("grid_version",)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load as usual (``args``: torch's ``local_metadata, strict, missing_keys, unexpected_keys, error_msgs``);
        a checkpoint without ``grid_version`` keeps the old grid mapping."""
        key = prefix + "grid_version"
        if key not in state_dict and prefix + "weight_real" in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.int64)  # saved before the exact mapping: keep the old one
            warnings.warn(
                "FFParser: the checkpoint has no 'grid_version' entry, so it was saved before the exact frequency "
                "mapping of the weight grid; keeping the old (align_corners) mapping it was trained with.",
                stacklevel=2,
            )
        elif key in state_dict and int(state_dict[key]) not in (0, self.GRID_VERSION):
            args[-1].append(
                f"FFParser: state-dict entry '{key}' = {int(state_dict[key])} is not a known grid version "
                f"(0 or {self.GRID_VERSION}): was it saved by a newer monai-diffseg?"
            )
            return
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._legacy_grid = int(self.grid_version) == 0

    def _weight(self, freq_shape: Sequence[int], spatial: Sequence[int] | None = None) -> torch.Tensor:
        """The complex weight for a spectrum of shape ``freq_shape`` (of an input of spatial size ``spatial``): the
        grid linearly interpolated, one dimension after the other, at the input's frequencies."""
        if self._legacy_grid:
            return self._legacy_weight(freq_shape)
        spatial = tuple(freq_shape[:-1]) + ((freq_shape[-1] - 1) * 2,) if spatial is None else tuple(spatial)
        weights, device = [self.weight_real, self.weight_imag], self.weight_real.device
        for d, (n_freq, n_in, n_grid) in enumerate(zip(freq_shape, spatial, self.weight_size)):
            if d < self.spatial_dims - 1:  # full spectrum: fftfreq order, centred grid
                pos = torch.fft.fftfreq(int(n_in), device=device, dtype=torch.float64) * n_grid + n_grid // 2
                top = n_grid - 1
            else:  # half spectrum: frequencies 0 .. n_in // 2
                pos = torch.arange(int(n_freq), device=device, dtype=torch.float64) / int(n_in) * n_grid
                top = n_grid // 2
            pos = pos.clamp(0, top)
            lo = pos.floor().long()
            hi = (lo + 1).clamp(max=weights[0].shape[d + 1] - 1)
            frac = (pos - lo).to(weights[0].dtype).reshape([-1 if i == d + 1 else 1 for i in range(weights[0].ndim)])
            lows = [w.index_select(d + 1, lo) for w in weights]
            weights = [w_lo + (w.index_select(d + 1, hi) - w_lo) * frac for w, w_lo in zip(weights, lows)]
        return torch.complex(weights[0].float(), weights[1].float())

    def spectral_weight(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """The complex weight ``(C, *F)`` that multiplies the ``rfftn`` spectrum (shape ``F``) of an input of spatial
        size ``spatial_shape``; it depends on the size only, so an export precomputes it for its fixed input size."""
        spatial = tuple(int(s) for s in spatial_shape)
        return self._weight((*spatial[:-1], spatial[-1] // 2 + 1), spatial)

    def _legacy_weight(self, freq_shape: Sequence[int]) -> torch.Tensor:
        """Mapping of the checkpoints without ``grid_version``: end-to-end (align_corners) interpolation."""
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
            spectrum = spectrum * self._weight(spectrum.shape[2:], spatial)
            out = torch.fft.irfftn(spectrum, s=spatial, dim=dims, norm="ortho")
        return out.to(x.dtype)
