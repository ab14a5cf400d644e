# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from . import diffusion_difference, diffusion_segmentation, diffusion_slice, region_of_interest
from .diffusion_difference import *
from .diffusion_segmentation import *
from .diffusion_slice import *
from .region_of_interest import *

__all__ = [
    *diffusion_difference.__all__,
    *diffusion_segmentation.__all__,
    *diffusion_slice.__all__,
    *region_of_interest.__all__,
]
