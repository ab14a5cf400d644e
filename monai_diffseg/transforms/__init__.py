# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .binary_mask import BinaryMask, BinaryMaskD, BinaryMaskd, BinaryMaskDict
from .collate_padding import UnpadCollateD, UnpadCollated, UnpadCollateDict
from .dense_crf import CRF_BACKENDS, GUIDE_SCALINGS, DenseCRF, scale_guide
from .ensemble_postprocess import (
    ENSEMBLE_FUSIONS,
    EnsembleFusionD,
    EnsembleFusiond,
    EnsembleFusionDict,
    EnsembleUncertaintyD,
    EnsembleUncertaintyd,
    EnsembleUncertaintyDict,
)
from .fusion import FUSION_METHODS, MajorityVoteFusion, MeanEnsembleFusion, MedSegDiffSquaredMean, RandomSubsetFusion
from .healthy_patches import (
    HEALTHY_SOURCES,
    BorderFill,
    BorderFillD,
    BorderFilld,
    BorderFillDict,
    HealthySource,
    RandBorderPatchD,
    RandBorderPatchd,
    RandBorderPatchDict,
    border_band,
    border_patch_starts,
)
from .io import (
    IMAGE_MODES,
    LoadImage2D,
    LoadImage2DD,
    LoadImage2Dd,
    LoadImage2DDict,
    PILModeConverter,
    SaveMapsd,
    display_range,
)
from .staple import STAPLEFusion
from .uncertainty import (
    UNCERTAINTY_MAPS,
    AmbiguousRegion,
    ConsistentRegion,
    EnsembleVariance,
    MutualInformation,
    PredictiveEntropy,
    binary_entropy,
    categorical_entropy,
)

__all__ = [
    "AmbiguousRegion",
    "binary_entropy",
    "BinaryMask",
    "BinaryMaskD",
    "BinaryMaskd",
    "BinaryMaskDict",
    "border_band",
    "border_patch_starts",
    "BorderFill",
    "BorderFillD",
    "BorderFilld",
    "BorderFillDict",
    "categorical_entropy",
    "ConsistentRegion",
    "CRF_BACKENDS",
    "DenseCRF",
    "display_range",
    "ENSEMBLE_FUSIONS",
    "EnsembleFusionD",
    "EnsembleFusiond",
    "EnsembleFusionDict",
    "EnsembleUncertaintyD",
    "EnsembleUncertaintyd",
    "EnsembleUncertaintyDict",
    "EnsembleVariance",
    "FUSION_METHODS",
    "GUIDE_SCALINGS",
    "HEALTHY_SOURCES",
    "HealthySource",
    "IMAGE_MODES",
    "LoadImage2D",
    "LoadImage2DD",
    "LoadImage2Dd",
    "LoadImage2DDict",
    "MajorityVoteFusion",
    "MeanEnsembleFusion",
    "MedSegDiffSquaredMean",
    "MutualInformation",
    "PILModeConverter",
    "PredictiveEntropy",
    "RandBorderPatchD",
    "RandBorderPatchd",
    "RandBorderPatchDict",
    "RandomSubsetFusion",
    "SaveMapsd",
    "scale_guide",
    "STAPLEFusion",
    "UNCERTAINTY_MAPS",
    "UnpadCollateD",
    "UnpadCollated",
    "UnpadCollateDict",
]
