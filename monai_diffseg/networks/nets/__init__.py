# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .diffseg import DIFFSEG_CONFIGS, DiffSegDenoiser, DiffSegPair
from .medsegdiff import MEDSEGDIFF_CONFIGS, MedSegDiff

__all__ = ["DIFFSEG_CONFIGS", "DiffSegDenoiser", "DiffSegPair", "MedSegDiff", "MEDSEGDIFF_CONFIGS"]
