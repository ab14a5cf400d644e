# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.transforms.binary_mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.transforms.binary_mask import BinaryMask, BinaryMaskd

PATTERN = np.array([[[0, 1, 1], [0, 0, 1]]], dtype=np.uint8)  # (1, 2, 3)


@pytest.mark.parametrize("scale", [1, 255])
@pytest.mark.parametrize("as_numpy", [True, False])
def test_binary_values_map_to_01(scale: int, as_numpy: bool) -> None:
    mask = PATTERN * scale if as_numpy else torch.as_tensor(PATTERN * scale)
    out = BinaryMask()(mask)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.equal(out, torch.as_tensor(PATTERN, dtype=torch.float32))


@pytest.mark.parametrize("value", [0, 1, 255])
def test_constant_masks_accepted(value: int) -> None:
    out = BinaryMask()(np.full((1, 4, 4), value, dtype=np.uint8))
    assert torch.equal(out, torch.full((1, 4, 4), float(value > 0)))


def test_intermediate_values_raise_naming_the_file() -> None:
    mask = MetaTensor(torch.tensor([[[0.0, 128.0, 255.0]]]), meta={"filename_or_obj": "/data/ISIC_0001_mask.jpg"})
    with pytest.raises(ValueError) as err:
        BinaryMask()(mask)
    msg = str(err.value)
    assert "/data/ISIC_0001_mask.jpg" in msg and "128" in msg and "threshold" in msg
    with pytest.raises(ValueError, match="in-memory mask"):
        BinaryMask()(np.array([[[0, 2]]]))


def test_threshold_mode() -> None:
    jpeg = np.array([[[0, 3, 126, 127, 128, 250, 255]]], dtype=np.uint8)
    out = BinaryMask(threshold=127)(jpeg)
    assert torch.equal(out, torch.tensor([[[0.0, 0, 0, 0, 1, 1, 1]]]))


def test_metatensor_meta_kept() -> None:
    mask = MetaTensor(torch.as_tensor(PATTERN * 255), meta={"filename_or_obj": "m.png"})
    out = BinaryMask()(mask)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "m.png"
    assert torch.equal(out.as_tensor(), torch.as_tensor(PATTERN, dtype=torch.float32))


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_identical_channels_reduced(channels: int) -> None:
    rgb = np.repeat(PATTERN * 255, channels, axis=0)
    out = BinaryMask()(rgb)
    assert out.shape == (1, 2, 3)
    assert torch.equal(out, torch.as_tensor(PATTERN, dtype=torch.float32))
    rgb[1, 0, 0] = 255
    with pytest.raises(ValueError, match="differing colour channels"):
        BinaryMask()(rgb)


def test_dict_version() -> None:
    data = {"image": np.random.rand(3, 2, 3), "label": PATTERN * 255, "other": PATTERN * 255}
    out = BinaryMaskd(keys="label")(data)
    assert torch.equal(out["label"], torch.as_tensor(PATTERN, dtype=torch.float32))
    assert out["image"] is data["image"] and out["other"] is data["other"]
    assert data["label"].max() == 255  # the input dict is not modified
    out = BinaryMaskd(keys=["label", "other"], threshold=100)(data)
    assert torch.equal(out["other"], torch.as_tensor(PATTERN, dtype=torch.float32))
    with pytest.raises(KeyError):
        BinaryMaskd(keys="seg")(data)
    assert "seg" not in BinaryMaskd(keys="seg", allow_missing_keys=True)(data)
    bad = MetaTensor(torch.tensor([[[0.0, 7.0]]]), meta={"filename_or_obj": "bad_mask.png"})
    with pytest.raises(ValueError, match="bad_mask.png"):
        BinaryMaskd(keys="label")({"label": bad})


def test_label_map_taken_as_is_whatever_the_threshold() -> None:
    label_map = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # what MONAI Label stores: 0/1
    assert BinaryMask(threshold=127)(label_map).tolist() == label_map.tolist()
    jpeg = torch.tensor([[[3.0, 250.0], [130.0, 1.0]]])  # a lossy 0-255 mask: the threshold applies
    assert BinaryMask(threshold=127)(jpeg).tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
