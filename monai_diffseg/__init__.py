# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""monai-diffseg: diffusion-model medical image segmentation (MedSegDiff, DiffSeg) as a MONAI plugin."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
