# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
A noise schedule with its signal-to-noise ratio scaled, registered in MONAI's ``NoiseSchedules`` as
``"snr_shifted"`` so every MONAI scheduler (DDPM, DDIM, PNDM) and :class:`DPMSolverMultistepScheduler` can use it by
name: ``DDPMScheduler(schedule="snr_shifted", base="scaled_linear_beta", snr_scale=0.25)``.

Scaling the SNR by ``s`` is the variance-preserving equivalent of scaling the clean input by ``b = sqrt(s)``
(Chen 2023, "On the importance of noise scheduling for diffusion models"; the input scaling of Chen et al. 2022,
"Analog Bits"): binary masks in ``{-1, 1}`` survive much more noise than natural images, so with ``s < 1`` more of the
training steps and sampling grid fall where the mask is still uncertain.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.schedulers.scheduler import NoiseSchedules

__all__ = ["snr_shifted_schedule"]


@NoiseSchedules.add_def("snr_shifted", "Any registered schedule with its SNR multiplied by snr_scale")
def snr_shifted_schedule(
    num_train_timesteps: int, base: str = "scaled_linear_beta", snr_scale: float = 0.25, **base_args: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    ``alpha_bar'_t = s SNR_t / (1 + s SNR_t)`` with ``SNR_t = alpha_bar_t / (1 - alpha_bar_t)`` of the ``base``
    schedule (any ``NoiseSchedules`` name, with ``base_args``), then ``beta'_t = 1 - alpha_bar'_t / alpha_bar'_{t-1}``.

    Args:
        num_train_timesteps: ``T``.
        base: the schedule to shift.
        snr_scale: ``s > 0``; 1 returns the base schedule, below 1 noisier at every step.
        base_args: keyword arguments of the base schedule (e.g. ``beta_start``, ``beta_end``).

    Returns:
        ``(betas, alphas, alphas_cumprod)``, each ``(T,)`` float32.
    """
    if snr_scale <= 0:
        raise ValueError(f"snr_shifted: snr_scale must be > 0, got {snr_scale}.")
    if base == "snr_shifted" or base not in NoiseSchedules.names:
        raise ValueError(
            f"snr_shifted: base must be another NoiseSchedules name {sorted(NoiseSchedules.names)}, got '{base}'."
        )
    out = NoiseSchedules[base](num_train_timesteps, **base_args)
    betas = out[0] if isinstance(out, tuple) else out
    alpha_bar = torch.cumprod(1.0 - betas.double(), dim=0)
    shifted = snr_scale * alpha_bar / (snr_scale * alpha_bar + 1.0 - alpha_bar)
    previous = torch.cat([shifted.new_ones(1), shifted[:-1]])
    new_betas = (1.0 - shifted / previous).clamp(0.0, 0.999)
    alphas = 1.0 - new_betas
    return new_betas.float(), alphas.float(), torch.cumprod(alphas, dim=0).float()
