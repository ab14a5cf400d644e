# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .binary_mask import BinaryMask, BinaryMaskd, BinaryMaskD, BinaryMaskDict
from .collate_padding import UnpadCollated, UnpadCollateD, UnpadCollateDict
from .dense_crf import CRF_BACKENDS, GUIDE_SCALINGS, DenseCRF, scale_guide
from .fusion import (
    FUSION_METHODS,
    MajorityVoteFusion,
    MeanEnsembleFusion,
    MedSegDiffSquaredMean,
    RandomSubsetFusion,
    check_ensemble_samples,
    check_probability_map,
)
from .io import (
    IMAGE_MODES,
    LoadImage2D,
    LoadImage2Dd,
    LoadImage2DD,
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
from .ensemble_postprocess import (
    ENSEMBLE_FUSIONS,
    EnsembleFusionD,
    EnsembleFusiond,
    EnsembleFusionDict,
    EnsembleUncertaintyD,
    EnsembleUncertaintyd,
    EnsembleUncertaintyDict,
)
from .healthy_patches import (
    HEALTHY_SOURCES,
    HealthySource,
    BorderFill,
    BorderFillD,
    BorderFilld,
    BorderFillDict,
    RandBorderPatchD,
    RandBorderPatchd,
    RandBorderPatchDict,
    border_band,
    border_patch_starts,
)
