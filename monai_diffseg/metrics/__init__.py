# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Distribution-level metrics for stochastic segmentation: generalized energy distance, sample diversity, HM-IoU."""

from __future__ import annotations

from .cup_to_disc import (
    CupToDiscRatioScores,
    vcdr_absolute_error,
    vertical_cup_to_disc_ratio,
    vertical_extent,
)
from .generalized_energy_distance import GED_KEYS, GeneralizedEnergyDistanceMetric, compute_generalized_energy_distance
from .hungarian_iou import HungarianMatchedIoUMetric, compute_hungarian_matched_iou
from .multirater import MultiRaterScores, compute_per_rater_dice
from .sample_diversity import SampleDiversityMetric, compute_sample_diversity
from .shift_score import (
    SHIFT_SCORES,
    SHIFT_STATS_FILENAME,
    ShiftScore,
    compute_anchor_disagreement,
    compute_ensemble_dice_error,
    compute_entropy_per_area,
    compute_feature_distance,
    condition_feature_statistics,
    condition_features,
    input_features,
    shift_statistics,
    shift_stats_file,
)
from .utils import compute_pairwise_iou

__all__ = [
    "CupToDiscRatioScores",
    "GED_KEYS",
    "GeneralizedEnergyDistanceMetric",
    "HungarianMatchedIoUMetric",
    "MultiRaterScores",
    "SampleDiversityMetric",
    "SHIFT_SCORES",
    "SHIFT_STATS_FILENAME",
    "ShiftScore",
    "compute_anchor_disagreement",
    "compute_ensemble_dice_error",
    "compute_entropy_per_area",
    "compute_feature_distance",
    "condition_feature_statistics",
    "condition_features",
    "input_features",
    "shift_statistics",
    "shift_stats_file",
    "compute_generalized_energy_distance",
    "compute_hungarian_matched_iou",
    "compute_pairwise_iou",
    "compute_per_rater_dice",
    "compute_sample_diversity",
    "vcdr_absolute_error",
    "vertical_cup_to_disc_ratio",
    "vertical_extent",
]
