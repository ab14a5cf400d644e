# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Transforms: ensemble fusion and uncertainty, DenseCRF, 2D image I/O for real archives, DiffSeg's healthy targets.

Each module's ``__all__`` is its public API; the package re-exports them so that every name is listed once.
"""

from __future__ import annotations

from . import (
    binary_mask,
    brats,
    collate_padding,
    dense_crf,
    ensemble_postprocess,
    fundus,
    fusion,
    healthy_patches,
    io,
    label_map,
    raters,
    staple,
    uncertainty,
)
from .binary_mask import *
from .brats import *
from .collate_padding import *
from .dense_crf import *
from .ensemble_postprocess import *
from .fundus import *
from .fusion import *
from .healthy_patches import *
from .io import *
from .label_map import *
from .raters import *
from .staple import *
from .uncertainty import *

__all__ = [
    *binary_mask.__all__,
    *brats.__all__,
    *collate_padding.__all__,
    *dense_crf.__all__,
    *ensemble_postprocess.__all__,
    *fundus.__all__,
    *fusion.__all__,
    *healthy_patches.__all__,
    *io.__all__,
    *label_map.__all__,
    *raters.__all__,
    *staple.__all__,
    *uncertainty.__all__,
]
