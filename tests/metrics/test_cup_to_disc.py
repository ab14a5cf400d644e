# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Vertical cup-to-disc ratio and its error, values by hand, including the image orientation of loaded PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from monai_diffseg.metrics import CupToDiscRatioScores, vcdr_absolute_error, vertical_cup_to_disc_ratio, vertical_extent
from monai_diffseg.transforms import LoadImage2D


def _mask(h: int, w: int, disc: tuple[slice, slice] | None, cup: tuple[slice, slice] | None) -> torch.Tensor:
    """(2, H, W) multi-label mask (numpy orientation)."""
    m = torch.zeros(2, h, w)
    if disc is not None:
        m[0][disc] = 1
    if cup is not None:
        m[1][cup] = 1
    return m


def test_vcdr_by_hand() -> None:
    # disc rows 2..11 (10 rows), cup rows 4..7 (4 rows), columns wider than tall: only rows count
    m = _mask(16, 20, (slice(2, 12), slice(1, 19)), (slice(4, 8), slice(2, 18)))
    assert float(vertical_cup_to_disc_ratio(m, vertical_axis=-2)) == pytest.approx(0.4)
    # the same mask in MONAI's (C, W, H) orientation, vertical axis last
    assert float(vertical_cup_to_disc_ratio(m.transpose(-1, -2), vertical_axis=-1)) == pytest.approx(0.4)
    # horizontally it would be 16 / 18: the function must not pick that up
    assert float(vertical_cup_to_disc_ratio(m, vertical_axis=-1)) == pytest.approx(16 / 18)
    # a cup in two pieces counts from its first to its last row
    m[1, 9:11, 5] = 1
    assert float(vertical_cup_to_disc_ratio(m, vertical_axis=-2)) == pytest.approx(7 / 10)
    # batched (N, C, H, W) and the empty conventions
    batch = torch.stack([m, _mask(16, 20, (slice(0, 5), slice(0, 5)), None), _mask(16, 20, None, None)])
    got = vertical_cup_to_disc_ratio(batch, vertical_axis=-2)
    assert got[0] == pytest.approx(0.7) and got[1] == 0.0 and math.isnan(got[2])
    assert vertical_extent(torch.zeros(3, 4)).item() == 0.0


def test_vcdr_error_conventions() -> None:
    err = vcdr_absolute_error(torch.tensor([0.5, float("nan"), 0.3, float("nan")]),
                              torch.tensor([0.7, 0.3, float("nan"), float("nan")]))  # fmt: skip
    assert err[0] == pytest.approx(0.2)
    assert err[1] == pytest.approx(0.7)  # missed disc: the worst error, max(0.3, 1 - 0.3)
    assert math.isnan(err[2]) and math.isnan(err[3])  # no reference disc: undefined


def test_case_scores_and_orientation_of_loaded_png(tmp_path) -> None:
    # a disc 10 rows x 4 columns tall in the PNG; loaded by PILReader as (C, W, H)
    disc = np.zeros((20, 12), np.uint8)
    disc[5:15, 4:8] = 1
    cup = np.zeros_like(disc)
    cup[8:13, 5:7] = 1
    for name, arr in (("disc", disc), ("cup", cup)):
        Image.fromarray(arr * 255).save(tmp_path / f"{name}.png")
    loaded = torch.cat([LoadImage2D("L")(str(tmp_path / f"{n}.png")) for n in ("disc", "cup")]) / 255
    assert loaded.shape == (2, 12, 20)  # (C, W, H)
    pred = loaded.clone()
    pred[1] = 0
    pred[1, 5, 9:12] = 1  # 3 rows
    scores = CupToDiscRatioScores()({"pred": pred, "label": loaded})
    assert scores["vcdr_ref"] == pytest.approx(0.5) and scores["vcdr_pred"] == pytest.approx(0.3)
    assert scores["vcdr_error"] == pytest.approx(0.2)
    assert CupToDiscRatioScores()({"pred": pred}) == {"vcdr_pred": pytest.approx(0.3)}
    empty = CupToDiscRatioScores()({"pred": torch.zeros_like(pred), "label": loaded})
    assert empty["vcdr_pred"] is None and empty["vcdr_error"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="channels"):
        vertical_cup_to_disc_ratio(torch.zeros(1, 4, 4))
