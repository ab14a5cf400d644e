# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .image_diffusion import ImageDiffusionPrepareBatch, diffusion_to_image, image_to_diffusion
from .loss import MaskDiffusionLoss
from .prepare_batch import PREDICTION_TARGETS, MaskDiffusionPrepareBatch, mask_to_diffusion
