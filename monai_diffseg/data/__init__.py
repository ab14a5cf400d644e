# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data lists and datasets: ISIC 2018 Task 1, flat image/mask folders, robust loading and a synthetic dermoscopy set."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .brats import (
    BRATS_ET_LABEL,
    BRATS_FORMATS,
    BRATS_MODALITIES,
    BRATS_SPLITS,
    brats_datalist,
    brats_output_name,
    detect_brats_format,
)
from .checked_cache_dataset import CheckedCacheDataset
from .ddti import (
    DDTI_FORMATS,
    DDTI_GROUP_REGEX,
    DDTI_IMAGE_EXTS,
    DDTI_UNANNOTATED,
    ddti_datalist,
    ddti_train_val_datalists,
    ddti_xml_polygons,
    detect_ddti_format,
    rasterize_polygons,
)
from .fundus import (
    DRISHTI_GS_SPLITS,
    REFUGE_SPLIT_FOLDERS,
    REFUGE_SPLITS,
    drishti_gs_datalist,
    fundus_datalist,
    fundus_layout,
    fundus_train_val_datalists,
    refuge_datalist,
)
from .isic2018 import (
    ISIC2018_SPLIT_FOLDERS,
    ISIC2018_SPLITS,
    image_folder_datalist,
    isic2018_datalist,
    isic2018_train_val_datalists,
)
from .multirater import (
    LIDC_CROPS_SPLITS,
    MULTIRATER_LAYOUTS,
    case_folder_datalist,
    lidc_crops_datalist,
    multirater_datalist,
    multirater_train_val_datalists,
)
from .polyp import (
    CVC_CLINICDB_FOLDERS,
    KVASIR_SEG_FOLDERS,
    POLYP_FORMATS,
    cvc_clinicdb_datalist,
    detect_polyp_format,
    kvasir_seg_datalist,
    polyp_datalist,
    polyp_train_val_datalists,
)
from .resume import append_case_records, case_id, read_case_records, resume_datalist, shard_datalist
from .skip_failed_loader import SkipFailedDataLoader
from .splits import split_datalist
from .train_loader import ClippedBatchDataLoader

if TYPE_CHECKING:  # imported on first use, see __getattr__
    from .synthetic import make_synthetic_isic2018, synthetic_lesion_sample
    from .synthetic_brats import make_synthetic_brats, synthetic_brats_sample
    from .synthetic_ddti import make_synthetic_ddti, synthetic_ultrasound_sample
    from .synthetic_fundus import make_synthetic_drishti_gs, make_synthetic_refuge, synthetic_fundus_sample
    from .synthetic_multirater import (
        make_synthetic_case_folders,
        make_synthetic_lidc_crops,
        synthetic_multirater_sample,
    )
    from .synthetic_polyp import make_synthetic_cvc_clinicdb, make_synthetic_kvasir_seg, synthetic_polyp_sample

__all__ = [
    "BRATS_ET_LABEL",
    "BRATS_FORMATS",
    "BRATS_MODALITIES",
    "BRATS_SPLITS",
    "CVC_CLINICDB_FOLDERS",
    "CheckedCacheDataset",
    "ClippedBatchDataLoader",
    "DDTI_FORMATS",
    "DDTI_GROUP_REGEX",
    "DDTI_IMAGE_EXTS",
    "DDTI_UNANNOTATED",
    "DRISHTI_GS_SPLITS",
    "ISIC2018_SPLITS",
    "ISIC2018_SPLIT_FOLDERS",
    "KVASIR_SEG_FOLDERS",
    "LIDC_CROPS_SPLITS",
    "MULTIRATER_LAYOUTS",
    "POLYP_FORMATS",
    "REFUGE_SPLITS",
    "REFUGE_SPLIT_FOLDERS",
    "SkipFailedDataLoader",
    "append_case_records",
    "brats_datalist",
    "brats_output_name",
    "case_folder_datalist",
    "case_id",
    "cvc_clinicdb_datalist",
    "ddti_datalist",
    "ddti_train_val_datalists",
    "ddti_xml_polygons",
    "detect_brats_format",
    "detect_ddti_format",
    "detect_polyp_format",
    "drishti_gs_datalist",
    "fundus_datalist",
    "fundus_layout",
    "fundus_train_val_datalists",
    "image_folder_datalist",
    "isic2018_datalist",
    "isic2018_train_val_datalists",
    "kvasir_seg_datalist",
    "lidc_crops_datalist",
    "make_synthetic_brats",
    "make_synthetic_case_folders",
    "make_synthetic_cvc_clinicdb",
    "make_synthetic_ddti",
    "make_synthetic_drishti_gs",
    "make_synthetic_isic2018",
    "make_synthetic_kvasir_seg",
    "make_synthetic_lidc_crops",
    "make_synthetic_refuge",
    "multirater_datalist",
    "multirater_train_val_datalists",
    "polyp_datalist",
    "polyp_train_val_datalists",
    "rasterize_polygons",
    "read_case_records",
    "refuge_datalist",
    "resume_datalist",
    "shard_datalist",
    "split_datalist",
    "synthetic_brats_sample",
    "synthetic_fundus_sample",
    "synthetic_lesion_sample",
    "synthetic_multirater_sample",
    "synthetic_polyp_sample",
    "synthetic_ultrasound_sample",
]

# ``synthetic`` is imported on first use: importing it here would make
# ``python -m monai_diffseg.data.synthetic`` warn that the module was imported before running as __main__.
_LAZY = {
    "make_synthetic_brats": ".synthetic_brats",
    "synthetic_brats_sample": ".synthetic_brats",
    "make_synthetic_case_folders": ".synthetic_multirater",
    "make_synthetic_lidc_crops": ".synthetic_multirater",
    "synthetic_multirater_sample": ".synthetic_multirater",
    "make_synthetic_isic2018": ".synthetic",
    "synthetic_lesion_sample": ".synthetic",
    "make_synthetic_cvc_clinicdb": ".synthetic_polyp",
    "make_synthetic_kvasir_seg": ".synthetic_polyp",
    "synthetic_polyp_sample": ".synthetic_polyp",
    "make_synthetic_ddti": ".synthetic_ddti",
    "synthetic_ultrasound_sample": ".synthetic_ddti",
    "make_synthetic_drishti_gs": ".synthetic_fundus",
    "make_synthetic_refuge": ".synthetic_fundus",
    "synthetic_fundus_sample": ".synthetic_fundus",
}


def __getattr__(name: str) -> Any:
    """Resolve lazily imported public names (PEP 562); ``AttributeError`` for any other name."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """List module attributes including the lazily imported ones."""
    return sorted(set(globals()) | set(__all__))
