# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""RegionOfInterestInferer: the coarse pass finds the disc, the fine pass on the crop is pasted back at full size."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.inferers import RegionOfInterestInferer, x0_to_probability


class ThresholdMember:
    """A stand-in member inferer: disc = bright red pixels, cup = bright green pixels; E copies; records its calls."""

    def __init__(self, num_samples: int = 2, num_inference_steps: int = 10) -> None:
        self.num_samples, self.num_inference_steps = num_samples, num_inference_steps
        self.calls: list[tuple[tuple[int, ...], int, int]] = []

    def __call__(self, x: torch.Tensor, network: object) -> torch.Tensor:
        self.calls.append((tuple(x.shape), self.num_samples, self.num_inference_steps))
        prob = torch.stack([(x[:, 0] > 0.5).float(), (x[:, 1] > 0.5).float()], dim=1)  # (N, 2, h, w)
        return prob[:, None].repeat(1, self.num_samples, 1, 1, 1)


def _fundus(h: int = 200, w: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.zeros(1, 3, h, w)
    img[0, 0, 100:130, 50:74] = 1.0  # disc: 30 x 24
    img[0, 1, 108:122, 56:66] = 1.0  # cup
    return img, torch.stack([img[0, 0], img[0, 1]])


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a * b).sum() / (a.sum() + b.sum()))


def test_roi_two_passes_and_paste_back() -> None:
    img, ref = _fundus()
    member = ThresholdMember()
    inferer = RegionOfInterestInferer(member, image_size=(64, 64), roi_margin=2.0, coarse_num_inference_steps=3)
    out = inferer(MetaTensor(img, meta={"filename_or_obj": ["a.png"]}), network=None)
    assert out.shape == (1, 2, 2, 200, 240) and isinstance(out, MetaTensor)
    # coarse: the whole image at 64x64, 1 member, 3 steps (a copy: the member keeps its settings); fine: the crop
    assert member.calls == [((1, 3, 64, 64), 1, 3), ((1, 3, 64, 64), 2, 10)]
    assert (member.num_samples, member.num_inference_steps) == (2, 10)
    fused = (out[0].mean(0) >= 0.5).float()
    assert _dice(fused[0], ref[0]) > 0.97 and _dice(fused[1], ref[1]) > 0.95
    assert fused[:, :80].sum() == 0 and fused[:, 150:].sum() == 0  # nothing outside the region
    # the crop is a 60-pixel square (2 x 30) around the disc: seen at 64 / 60 of the full resolution, while the
    # whole image is seen at 64 / 240 (roi=False): the disc is found, but coarsely
    whole = RegionOfInterestInferer(ThresholdMember(), image_size=(64, 64), roi=False)(img, None)
    assert whole.shape == (1, 2, 2, 200, 240)
    assert _dice((whole[0].mean(0) >= 0.5).float()[0], ref[0]) < _dice(fused[0], ref[0])


def test_roi_locate_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    inferer = RegionOfInterestInferer(ThresholdMember(), image_size=(32, 32), roi_margin=2.0, roi_min_fraction=0.5)
    prob = torch.zeros(2, 32, 32)
    prob[0, 4:8, 10:12] = 0.9  # 4 x 2 at 32 -> 16 x 8 at 128 x 128
    prob[0, 20, 20] = 0.9  # a stray pixel: not the largest component
    centre, side = inferer.locate(prob, (128, 128))
    assert centre == (24.0, 44.0) and side == 64.0  # max(2 * 16, 0.5 * 128)
    assert inferer.locate(torch.zeros(2, 32, 32), (128, 128)) is None
    empty = torch.zeros(2, 3, 64, 64)
    with caplog.at_level(logging.WARNING):
        out = inferer(empty, None)
    assert out.shape == (2, 2, 2, 64, 64) and out.sum() == 0 and "found no structure" in caplog.text


def test_roi_checks_member_output() -> None:
    with pytest.raises(ValueError, match=r"must return \(N, E, C, H, W\)"):
        RegionOfInterestInferer(lambda x, net: x.mean(1, keepdim=True), image_size=16, roi=False)(
            torch.rand(1, 3, 20, 20), None
        )
    with pytest.raises(ValueError, match="roi_margin"):
        RegionOfInterestInferer(ThresholdMember(), image_size=16, roi_margin=0)


def test_multi_label_probabilities_are_not_renormalised() -> None:
    x0 = torch.tensor([1.0, -1.0, 0.0, 0.0]).reshape(1, 1, 2, 1, 2)  # (N, E, C=2, 1, 2)
    assert x0_to_probability(x0, channel_dim=2, multi_label=True).flatten().tolist() == [1.0, 0.0, 0.5, 0.5]
    both = torch.ones(1, 1, 2, 1, 1)  # a cup pixel: disc and cup both foreground
    assert x0_to_probability(both, channel_dim=2, multi_label=True).flatten().tolist() == [1.0, 1.0]
    assert x0_to_probability(both, channel_dim=2).flatten().tolist() == [0.5, 0.5]  # one-hot classes
