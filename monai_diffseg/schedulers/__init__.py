# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Sampling schedulers (few-step ODE solvers) for diffusion segmentation."""

from __future__ import annotations

from .dpm_solver import DPMSolverMultistepScheduler

__all__ = ["DPMSolverMultistepScheduler"]
