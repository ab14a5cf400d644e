# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The task bundles' inference sampler as wired in their inference.json (issue 16): thyroid and fundus members start
from the anchor head noised to ``t_start`` 263 and run only the 6 grid steps ``<= t_start`` of the 20-step DDIM grid
(``sampler_init noise`` restores the 20 steps from noise); the multi-rater bundle keeps the 20 steps from noise by
default (the rater spread, GED, needs the members' diversity) and takes ``sampler_init anchor``. Run on a stand-in
network that records its calls (no checkpoint needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from bundle_utils import ROOT
from monai.bundle import ConfigParser


class RecordingNet(nn.Module):
    """A stand-in MedSegDiff with ``C`` mask channels: fixed anchor logits, x0 prediction ``tanh(2 x_t)``; records the
    timesteps of every denoiser call."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.anchor_head = nn.Identity()
        self.weight = nn.Parameter(torch.zeros(1))
        self.timesteps: list[int] = []

    def encode_condition(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (image.mean(dim=1, keepdim=True),)

    def anchor(self, condition: tuple[torch.Tensor, ...]) -> torch.Tensor:
        cond = condition[0]
        return torch.linspace(-3.0, 3.0, cond.shape[-1]).expand(cond.shape[0], self.out_channels, *cond.shape[2:])

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: tuple | None = None) -> torch.Tensor:
        self.timesteps.append(int(timesteps.flatten()[0]))
        return torch.tanh(2.0 * x_t)


# bundle -> (the diffusion sampler's config id, mask channels, image channels, default sampler_init)
BUNDLES = {
    "medsegdiff_thyroid_ddti": ("inferer", 1, 1, "anchor"),
    "medsegdiff_fundus_disc_cup": ("member_inferer", 2, 3, "anchor"),  # the ROI wrapper's coarse and fine passes use it
    "medsegdiff_multirater": ("inferer", 1, 1, "noise"),
}
# MONAI's 20-step DDIM grid is 999, 946, ..., 53, 0: from t_start 263 the steps 263, 210, 158, 105, 53, 0 run, once for
# all 5 members (member_batch_size 5); from noise all 20
STEPS = {"anchor": [263, 210, 158, 105, 53, 0], "noise": [round(999 * i / 19) for i in range(19, -1, -1)]}


def _sampler(bundle: str, **override) -> tuple[torch.nn.Module, int, int]:
    key, channels, in_channels, _ = BUNDLES[bundle]
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser.update({"device": "$torch.device('cpu')", "member_batch_size": 5, **override})
    return parser.get_parsed_content(key), channels, in_channels


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
@pytest.mark.parametrize("sampler_init", [None, "anchor", "noise"])
def test_sampler_init_sets_the_start_and_the_network_evaluations(bundle: str, sampler_init: str | None) -> None:
    """``None``: the bundle's default."""
    inferer, channels, in_channels = _sampler(
        bundle, **({} if sampler_init is None else {"sampler_init": sampler_init})
    )
    net = RecordingNet(channels)
    probs = inferer(torch.rand(1, in_channels, 16, 16), net)
    assert probs.shape == (1, 5, channels, 16, 16)
    assert net.timesteps == STEPS[sampler_init or BUNDLES[bundle][3]]
