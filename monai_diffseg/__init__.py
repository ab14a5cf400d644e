# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""monai-diffseg: diffusion-model medical image segmentation (MedSegDiff, DiffSeg) as a MONAI plugin."""

from __future__ import annotations

__version__ = "0.1.0"

# registers the "snr_shifted" noise schedule in MONAI's NoiseSchedules on any import of the package, so a bundle
# config or a user's scheduler can name it without importing monai_diffseg.schedulers first
from .schedulers import snr_shift as _snr_shift  # noqa: E402, F401

__all__ = ["__version__"]
