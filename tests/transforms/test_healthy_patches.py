# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Mask-free healthy-skin data for DiffSeg: border patches and pseudo-healthy border fills."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_diffseg.data import synthetic_lesion_sample
from monai_diffseg.transforms import BorderFill, BorderFilld, RandBorderPatchd, border_band, border_patch_starts


def test_patches_lie_in_the_border_band() -> None:
    rng = np.random.RandomState(0)
    starts = border_patch_starts((64, 80), (8, 8), 0.2, 400, rng)
    band_y, band_x = round(0.2 * 64), round(0.2 * 80)
    for y, x in starts:
        assert 0 <= y <= 56 and 0 <= x <= 72
        inside_band = y + 8 <= band_y or y >= 64 - band_y or x + 8 <= band_x or x >= 80 - band_x
        assert inside_band, (y, x)
    ys = np.array([s[0] for s in starts])
    assert (ys < 10).any() and (ys > 50).any()  # both sides are sampled


def test_rand_border_patchd_same_location_for_all_keys_and_seeded() -> None:
    img = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 32, 32)
    t = RandBorderPatchd(["image", "other"], patch_size=8, num_samples=5)
    t.set_random_state(3)
    out = t({"image": img, "other": img.clone(), "case": "a"})
    assert len(out) == 5
    for item in out:
        assert item["image"].shape == (2, 8, 8) and torch.equal(item["image"], item["other"]) and item["case"] == "a"
        y, x = item["patch_start"].tolist()
        assert torch.equal(item["image"], img[:, y : y + 8, x : x + 8])
    again = RandBorderPatchd(["image", "other"], patch_size=8, num_samples=5).set_random_state(3)
    assert [o["patch_start"].tolist() for o in again({"image": img, "other": img})] == [
        o["patch_start"].tolist() for o in out
    ]
    with pytest.raises(ValueError, match=r"patch_size \(40, 40\)"):
        RandBorderPatchd("image", patch_size=40)({"image": img})


def test_synthetic_borders_are_lesion_free() -> None:
    """The weak-supervision assumption holds on the synthetic data the tests use."""
    band = border_band((64, 64), 0.15)[0].bool().numpy()
    leaked = [synthetic_lesion_sample(np.random.default_rng([0, i]), (64, 64))[1][band].mean() for i in range(30)]
    assert np.mean(leaked) < 0.02


def test_border_fill_removes_the_lesion_and_keeps_the_border() -> None:
    image, mask = synthetic_lesion_sample(np.random.default_rng([0, 4]), (64, 64))
    x = torch.as_tensor(image).permute(2, 0, 1).float() / 255
    healthy = BorderFill(border_fraction=0.15)(x)
    band = border_band((64, 64), 0.15).bool()
    assert torch.equal(healthy[band.expand_as(x)], x[band.expand_as(x)])
    lesion = torch.as_tensor(mask).bool()
    gray, gray_h = x.mean(0), healthy.mean(0)
    assert gray[lesion].mean() < gray[~lesion].mean() - 0.1  # the lesion is dark in the image
    assert abs(gray_h[lesion].mean() - gray[~lesion & ~band[0]].mean()) < 0.08  # and skin-coloured in the fill
    d = BorderFilld("image")({"image": x})
    assert torch.allclose(d["healthy"], healthy) and d["image"] is x
    with pytest.raises(ValueError, match="border_fraction"):
        BorderFill(border_fraction=0.6)
