# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The shared input-check helpers of monai_diffseg.utils (used by the networks and inferers)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.utils import batch_item_names, check_finite, check_floating, check_timesteps, data_checks_enabled


def test_check_finite_lists_items_and_counts() -> None:
    x = torch.zeros(13, 2, 3)
    x[1:13, 0, 0] = float("nan")
    x[12, 1, 1] = float("inf")
    with pytest.raises(
        ValueError, match=r"^f: y .*\(12 NaN, 1 Inf\) in batch item\(s\) \[1, 2, .*, 10\] and 2 more of 13"
    ):
        check_finite(x, "y", "f")
    check_finite(torch.zeros(2, 3), "y")  # finite: no error
    check_finite(torch.full((2, 3), 255, dtype=torch.uint8), "y")  # integers are always finite
    with pytest.raises(ValueError, match=r"\[0\] \(member 0\) of 1; custom hint"):
        check_finite(torch.tensor([[float("nan")]]), "y", item_names=lambda i: f"member {i}", hint="custom hint")


def test_check_floating() -> None:
    x = torch.rand(2, 3)
    assert check_floating(x, "x") is x
    assert check_floating(x.double(), "x", dtype=torch.float32).dtype == torch.float32
    with pytest.raises(TypeError, match=r"^net: x has dtype torch.int32; expected a floating point tensor"):
        check_floating(x.int(), "x", "net")


def test_check_timesteps() -> None:
    check_timesteps(torch.tensor([0, 999]), 2, 1000)
    check_timesteps(torch.tensor(5), 4)
    with pytest.raises(ValueError, match=r"in \[0, 999\] \(num_train_timesteps=1000\), got \[1000\] at batch item"):
        check_timesteps(torch.tensor([0, 1000]), 2, 1000)
    with pytest.raises(ValueError, match=r"must be >= 0 and finite.*got \[-3\] at index\(es\) \[1\]"):
        check_timesteps(torch.tensor([1, -3]))
    with pytest.raises(ValueError, match=r"shape \(4,\).*got shape \(2, 2\)"):
        check_timesteps(torch.zeros(2, 2), 4)


def test_batch_item_names_and_switch() -> None:
    batch = MetaTensor(torch.zeros(2, 1, 4, 4))
    batch.meta["filename_or_obj"] = ["a.png", "b.png"]
    assert batch_item_names(batch) == ["a.png", "b.png"]
    assert batch_item_names(torch.zeros(2, 1)) is None
    assert data_checks_enabled()
