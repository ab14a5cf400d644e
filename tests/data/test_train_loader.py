# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.data.ClippedBatchDataLoader."""

from __future__ import annotations

import pytest
import torch

from monai_diffseg.data import ClippedBatchDataLoader


def test_small_data_set_is_one_batch_not_an_empty_epoch() -> None:
    data = [torch.full((1,), float(i)) for i in range(2)]
    batches = list(ClippedBatchDataLoader(data, batch_size=8, drop_last=True))
    assert len(batches) == 1 and batches[0].shape == (2, 1)
    batches = list(ClippedBatchDataLoader([torch.zeros(1)] * 10, batch_size=4, drop_last=True))
    assert [len(b) for b in batches] == [4, 4]  # a large set keeps drop_last


def test_empty_data_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="training data set is empty"):
        ClippedBatchDataLoader([], batch_size=2)
