# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .medsegdiff import MEDSEGDIFF_CONFIGS, MedSegDiff
from .diffseg import DIFFSEG_CONFIGS, DiffSegDenoiser, DiffSegPair

__all__ = [
    "DIFFSEG_CONFIGS",
    "DiffSegDenoiser",
    "DiffSegPair",
    "MedSegDiff",
    "MEDSEGDIFF_CONFIGS",
]
