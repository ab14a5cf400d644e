# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.transforms.MasksToLabelMap(d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.transforms import MasksToLabelMap, MasksToLabelMapd


def test_nested_channels_last_wins() -> None:
    disc = torch.tensor([[0.9, 0.9, 0.1], [0.6, 0.2, 0.0]])
    cup = torch.tensor([[0.7, 0.1, 0.8], [0.4, 0.0, 0.5]])
    out = MasksToLabelMap(values=(1, 2))(torch.stack([disc, cup]))
    # cup (2) over disc (1), rim = disc minus cup, a cup outside the disc is still cup, 0.5 is on
    assert out.dtype == torch.uint8 and out.tolist() == [[2, 1, 2], [1, 0, 2]]


def test_binary_default_values_and_meta_kept() -> None:
    img = MetaTensor(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    out = MasksToLabelMapd("pred")({"pred": img})["pred"]
    assert isinstance(out, MetaTensor) and out.shape == (2, 2) and out.tolist() == [[0, 1], [1, 0]]
    assert torch.equal(out.affine, img.affine)
    assert MasksToLabelMap(dtype=np.int32)(np.ones((2, 3, 4), np.float32)).tolist() == [[2] * 4] * 3


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="0 is the background"):
        MasksToLabelMap(values=[0, 1])
    with pytest.raises(ValueError, match=r"1 values \[1\] for 2 channels"):
        MasksToLabelMap(values=[1])(torch.zeros(2, 4, 4))
