# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""BraTS label map <-> TC / WT / ET regions: hand-computed voxels, the round trip, the 2023 label check."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.transforms import (
    BratsLabelsToRegions,
    BratsLabelsToRegionsd,
    BratsRegionsToLabels,
    BratsRegionsToLabelsd,
)


def test_labels_to_regions_by_hand() -> None:
    label = torch.tensor([0, 1, 2, 4]).reshape(1, 1, 1, 4).float()
    regions = BratsLabelsToRegions(4)(label)
    assert regions.shape == (3, 1, 1, 4)
    # voxels: background, necrosis, oedema, enhancing; channels TC, WT, ET
    assert regions[:, 0, 0].tolist() == [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    label23 = torch.tensor([0, 1, 2, 3]).reshape(1, 1, 4)  # no channel axis, BraTS 2023
    assert torch.equal(BratsLabelsToRegions(3)(label23), regions)


def test_round_trip_keeps_metadata() -> None:
    torch.manual_seed(0)
    label = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (1, 5, 6, 7))].float()
    affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    meta = MetaTensor(label, affine=affine, meta={"filename_or_obj": "case_seg.nii.gz"})
    out = BratsRegionsToLabelsd("seg")(BratsLabelsToRegionsd("seg")({"seg": meta}))["seg"]
    assert out.dtype == torch.uint8 and out.shape == (5, 6, 7)
    assert torch.equal(out.as_tensor(), label[0].to(torch.uint8))
    assert torch.equal(out.affine, affine.double())


def test_regions_to_labels_inner_region_wins_and_threshold() -> None:
    # probabilities (TC, WT, ET) of 5 voxels: none, WT only, TC+WT, ET only (not nested), TC at 0.5 exactly
    probs = torch.tensor([[0.1, 0.2, 0.9, 0.0, 0.5], [0.2, 0.7, 0.9, 0.0, 0.3], [0.0, 0.1, 0.2, 0.8, 0.1]])
    assert BratsRegionsToLabels(4)(probs).tolist() == [0, 2, 1, 4, 1]
    assert BratsRegionsToLabels(3, threshold=0.6)(probs).tolist() == [0, 2, 1, 3, 0]
    with pytest.raises(ValueError, match="TC, WT, ET"):
        BratsRegionsToLabels()(probs[:2])


def test_label_check_names_file_and_fix() -> None:
    label = MetaTensor(torch.tensor([[[0.0, 1, 2, 3]]]), meta={"filename_or_obj": "/d/BraTS-GLI-1-000-seg.nii.gz"})
    with pytest.raises(ValueError, match=r"BraTS-GLI-1-000-seg\.nii\.gz.*\[3\].*set et_label=3"):
        BratsLabelsToRegions(4)(label)
    with pytest.raises(ValueError, match=r"\[4\].*set et_label=4"):
        BratsLabelsToRegions(3)(torch.tensor([[[0, 4]]]))
    with pytest.raises(ValueError, match=r"\[7\] outside"):
        BratsLabelsToRegions(4)(torch.tensor([[[0, 7]]]))
    with pytest.raises(ValueError, match="et_label must be"):
        BratsLabelsToRegions(2)
