# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""A training data loader that never turns a small data set into an empty epoch."""

from __future__ import annotations

import logging
from typing import Any

from monai.data import DataLoader

__all__ = ["ClippedBatchDataLoader"]

logger = logging.getLogger(__name__)


class ClippedBatchDataLoader(DataLoader):
    """
    :class:`monai.data.DataLoader` whose ``batch_size`` is clipped to the number of cases, so that ``drop_last=True``
    (equal batch sizes for a large data set) never leaves zero batches. Without it, a training set smaller than one
    batch (MONAI Label's ``/train`` with 2 labelled images and batch 8) makes the trainer log "dataloader is empty"
    and finish without training: a silent no-op. An empty data set raises instead.

    Args:
        dataset: the training data set (``len()`` is read once, at construction; with a ``sampler``, e.g. a
            ``DistributedSampler``, the sampler's length, the cases of this rank).
        batch_size: the wanted batch size; ``min(batch_size, len(dataset))`` is used.
        kwargs: other :class:`monai.data.DataLoader` arguments (``shuffle``, ``drop_last``, ``num_workers`` ...).

    Raises:
        ValueError: ``dataset`` is empty (naming what to check).
    """

    def __init__(self, dataset: Any, batch_size: int = 1, **kwargs: Any) -> None:
        sampler = kwargs.get("sampler")
        num_cases = len(sampler) if sampler is not None else len(dataset)  # a DistributedSampler: this rank's share
        if num_cases == 0:
            raise ValueError(
                f"the training data set is empty ({type(dataset).__name__} of 0 cases): check the data list "
                "(dataset_dir, datalists; MONAI Label: are any images labelled?)."
            )
        if batch_size > num_cases:
            logger.warning(f"{num_cases} training case(s), fewer than batch_size={batch_size}: batches of {num_cases}.")
            batch_size = num_cases
        super().__init__(dataset, batch_size=batch_size, **kwargs)
