# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

from .case_metrics import CaseMetricsWriter
from .checkpoint_loader import CheckedCheckpointLoader
from .checkpoint_saver import AtomicCheckpointSaver, FinalModelSaver, remove_stale_temp_files
from .random_state import RandomStateHandler

__all__ = [
    "AtomicCheckpointSaver",
    "CaseMetricsWriter",
    "CheckedCheckpointLoader",
    "FinalModelSaver",
    "RandomStateHandler",
    "remove_stale_temp_files",
]
