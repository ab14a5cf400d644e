# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Sampling schedulers (few-step ODE solvers) and noise schedules for diffusion segmentation."""

from __future__ import annotations

from .dpm_solver import DPMSolverMultistepScheduler
from .snr_shift import snr_shifted_schedule

__all__ = ["DPMSolverMultistepScheduler", "snr_shifted_schedule"]
