# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .diffusion_difference import (
    DIFFSEG_FIXED_THRESHOLD,
    DIFFSEG_TIMESTEPS,
    DiffusionDifferenceInferer,
    grayscale,
    otsu_threshold,
)
from .diffusion_segmentation import (
    DiffusionSegmentationInferer,
    DiffusionSegmentationTrainInferer,
    DiffusionSlidingWindowInferer,
    memory_aware_member_chunk,
    x0_to_probability,
)

__all__ = [
    "DIFFSEG_FIXED_THRESHOLD",
    "DIFFSEG_TIMESTEPS",
    "DiffusionDifferenceInferer",
    "DiffusionSegmentationInferer",
    "DiffusionSegmentationTrainInferer",
    "DiffusionSlidingWindowInferer",
    "grayscale",
    "memory_aware_member_chunk",
    "otsu_threshold",
    "x0_to_probability",
]
