# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Fundus labels, nesting, disc-centred crops, downscaling and per-structure map files, values by hand."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_diffseg.transforms import (
    DownscaleToMaxSized,
    EnforceNesting,
    EnforceNestingd,
    FundusLabeld,
    RandDiscCropd,
    SaveMapsd,
    crop_square,
    expert_level,
    square_roi,
)


def test_refuge_coded_mask() -> None:
    mask = torch.tensor([[[255.0, 128.0, 0.0, 129.0, 60.0, 200.0]]])  # (1, 1, 6)
    out = FundusLabeld("label")({"label": MetaTensor(mask, meta={"filename_or_obj": "x.bmp"})})["label"]
    assert out.shape == (2, 1, 6) and out.meta["filename_or_obj"] == "x.bmp"
    assert out[0, 0].tolist() == [0, 1, 1, 1, 1, 0]  # disc: rim and cup (< 192)
    assert out[1, 0].tolist() == [0, 0, 1, 0, 1, 0]  # cup (< 64)


def test_served_label_map_round_trips() -> None:
    """The 0 / 1 rim / 2 cup map the bundle serves (and MONAI Label stores) reads back as the same disc and cup."""
    from monai_diffseg.transforms import MasksToLabelMap

    disc = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    cup = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    label_map = MasksToLabelMap(values=(1, 2))(torch.stack([disc, cup]))
    assert label_map.tolist() == [[0, 1, 2, 1, 0]]
    out = FundusLabeld("label")({"label": label_map[None].float()})["label"]
    assert out[0].tolist() == disc.tolist() and out[1].tolist() == cup.tolist()


@pytest.mark.parametrize("k, disc_row", [(1, [0, 1, 1, 1, 1]), (2, [0, 0, 1, 1, 1]), (4, [0, 0, 0, 0, 1])])
def test_drishti_soft_maps(k: int, disc_row: list[int]) -> None:
    levels = torch.tensor([[[0.0, 64.0, 128.0, 191.0, 255.0]]])
    cup = torch.tensor([[[255.0, 255.0, 255.0, 64.0, 255.0]]])  # overhangs the disc at the first pixels
    d = FundusLabeld()({"label": levels, "label_cup": cup, "expert_threshold": k})
    assert "label_cup" not in d and d["label"][0, 0].tolist() == disc_row
    # nested: the cup is clipped to the disc
    assert d["label"][1, 0].tolist() == [a * b for a, b in zip(disc_row, [1, 1, 1, int(k == 1), 1])]
    loose = FundusLabeld(nested=False)({"label": levels, "label_cup": cup, "expert_threshold": k})["label"]
    assert loose[1, 0].tolist() == [1, 1, 1, int(k == 1), 1]
    assert expert_level(2) == pytest.approx(95.625)
    with pytest.raises(ValueError, match="expert_threshold"):
        FundusLabeld(expert_threshold=0)
    with pytest.raises(ValueError, match="differ in size"):
        FundusLabeld()({"label": levels, "label_cup": torch.zeros(1, 1, 4)})


def test_enforce_nesting() -> None:
    prob = torch.tensor([[0.9, 0.2, 0.6], [0.5, 0.7, 0.6]])[:, None]  # (C=2, 1, 3)
    out = EnforceNesting()(prob)
    assert torch.allclose(out[1, 0], torch.tensor([0.5, 0.2, 0.6])) and torch.equal(out[0], prob[0])
    assert prob[1, 0, 1] == 0.7  # the input is not modified
    masks = (prob > 0.5).float()
    assert EnforceNesting()(masks)[1, 0].tolist() == [0.0, 0.0, 1.0]  # cup AND disc
    samples = torch.stack([prob, prob.flip(0)])  # (E=2, C=2, 1, 3)
    nested = EnforceNestingd("s", channel_dim=1)({"s": samples})["s"]
    assert (nested[:, 1] <= nested[:, 0]).all() and torch.equal(nested[1, 1, 0], torch.tensor([0.5, 0.2, 0.6]))
    meta = EnforceNesting()(MetaTensor(prob, meta={"filename_or_obj": "a.png"}))
    assert isinstance(meta, MetaTensor) and meta.meta["filename_or_obj"] == "a.png"
    with pytest.raises(ValueError, match="need 2 channels"):
        EnforceNesting()(torch.zeros(1, 3, 3))


def test_square_roi_and_crop() -> None:
    m = torch.zeros(20, 30)
    m[4:8, 10:16] = 1  # extents 4 x 6, centre (6, 13)
    centre, side = square_roi(m, margin=2.0)
    assert centre == (6.0, 13.0) and side == 12.0
    assert square_roi(torch.zeros(5, 5)) is None
    img = torch.arange(20 * 30, dtype=torch.float32).reshape(1, 20, 30)
    crop = crop_square(img, centre, side)
    assert crop.shape == (1, 12, 12) and torch.equal(crop, img[:, 0:12, 7:19])
    # out of the image: zero-padded, the inside part where it belongs
    edge = crop_square(img, (1.0, 28.0), 6)  # rows -2..3, columns 25..30
    assert edge.shape == (1, 6, 6) and torch.equal(edge[:, 2:, :5], img[:, 0:4, 25:30])
    assert edge[:, :2].abs().sum() == 0 and edge[:, :, 5:].abs().sum() == 0


def test_rand_disc_crop() -> None:
    label = torch.zeros(2, 40, 50)
    label[0, 10:20, 20:28] = 1
    label[1, 13:17, 22:26] = 1
    image = torch.rand(3, 40, 50)
    fixed = RandDiscCropd(["image", "label"], prob=1.0, margin=2.0)({"image": image, "label": label})
    # disc extents 10 x 8 -> side 20 around (15, 24): rows 5..24, cols 14..33
    assert fixed["image"].shape == (3, 20, 20) and torch.equal(fixed["image"], image[:, 5:25, 14:34])
    assert fixed["label"][0].sum() == label[0].sum() and fixed["label"][1].sum() == label[1].sum()
    never = RandDiscCropd(["image", "label"], prob=0.0)({"image": image, "label": label})
    assert never["image"] is image
    jitter = RandDiscCropd(["image", "label"], prob=1.0, scale_range=(0.8, 1.2), shift_range=0.2)
    jitter.set_random_state(seed=0)
    sides = {jitter({"image": image, "label": label})["image"].shape[-1] for _ in range(8)}
    assert len(sides) > 1 and all(16 <= s <= 24 for s in sides)
    no_disc = RandDiscCropd(["image", "label"])({"image": image, "label": torch.zeros(2, 40, 50)})
    assert no_disc["image"].shape == (3, 40, 50)


def test_downscale_to_max_size() -> None:
    t = DownscaleToMaxSized(["image", "label"], max_size=32, mode=["bilinear", "nearest"])
    d = t({"image": torch.rand(3, 64, 48), "label": torch.ones(2, 64, 48)})
    assert (
        d["image"].shape == (3, 32, 24)
        and d["label"].shape == (2, 32, 24)
        and set(d["label"].unique().tolist()) == {1.0}
    )
    small = torch.rand(3, 20, 30)
    assert t({"image": small, "label": small})["image"] is small


def test_save_maps_per_structure(tmp_path) -> None:
    prob = torch.zeros(2, 6, 4)  # (C, W, H)
    prob[0] = 1.0
    prob[1, :, :2] = 0.5
    meta = {"filename_or_obj": "/data/case7.jpg"}
    SaveMapsd(["prob", "variance"], output_dir=tmp_path, channel_names=["disc", "cup"])(
        {"prob": MetaTensor(prob, meta=meta), "variance": MetaTensor(prob * 0.25, meta=meta)}
    )
    assert sorted(os.listdir(tmp_path)) == ["case7_cup_prob.png", "case7_cup_variance.png", "case7_disc_prob.png",
                                            "case7_disc_variance.png"]  # fmt: skip
    cup = Image.open(tmp_path / "case7_cup_prob.png")
    assert cup.mode == "L" and cup.size == (6, 4)
    assert np.asarray(cup)[:2].tolist() == [[128] * 6] * 2 and np.asarray(cup)[2:].max() == 0
    assert np.asarray(Image.open(tmp_path / "case7_disc_variance.png")).min() == 255  # 0.25 is the top of the range
    with pytest.raises(ValueError, match="channel_names"):
        SaveMapsd("prob", output_dir=tmp_path, channel_names=["a", "b", "c"])({"prob": MetaTensor(prob, meta=meta)})
