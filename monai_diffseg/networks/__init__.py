# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .blocks import AnchorHead, ConditionEncoder, ConditionFusion, FFParser
from .exported import ExportedMedSegDiff, export_medsegdiff
from .nets import MEDSEGDIFF_CONFIGS, MedSegDiff

__all__ = [
    "AnchorHead",
    "ConditionEncoder",
    "ConditionFusion",
    "ExportedMedSegDiff",
    "FFParser",
    "MedSegDiff",
    "MEDSEGDIFF_CONFIGS",
    "export_medsegdiff",
]
