# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .case_metrics import CaseMetricsWriter
from .checkpoint_loader import CheckedCheckpointLoader
from .checkpoint_saver import AtomicCheckpointSaver, FinalModelSaver, remove_stale_temp_files
from .progress import CaseProgressHandler, count_cases
from .random_state import RandomStateHandler
from .review_report import ReviewReportWriter
from .shift_statistics import ShiftStatisticsWriter, spread_subset
from .tracking import tracking_disabled

__all__ = [
    "AtomicCheckpointSaver",
    "CaseMetricsWriter",
    "CaseProgressHandler",
    "CheckedCheckpointLoader",
    "FinalModelSaver",
    "RandomStateHandler",
    "ReviewReportWriter",
    "ShiftStatisticsWriter",
    "count_cases",
    "remove_stale_temp_files",
    "spread_subset",
    "tracking_disabled",
]
