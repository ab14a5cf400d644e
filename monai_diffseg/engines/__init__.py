# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .loss import MaskDiffusionLoss
from .prepare_batch import (
    PREDICTION_TARGETS,
    DiffusionTargetPrepareBatch,
    ImageDiffusionPrepareBatch,
    MaskDiffusionPrepareBatch,
    mask_to_diffusion,
)

__all__ = [
    "DiffusionTargetPrepareBatch",
    "ImageDiffusionPrepareBatch",
    "MaskDiffusionLoss",
    "MaskDiffusionPrepareBatch",
    "PREDICTION_TARGETS",
    "mask_to_diffusion",
]
