# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/uncertainty_artifacts.py: its lattice measures on known maps, and a smoke run on a synthetic folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from monai_diffseg.data import synthetic_lesion_sample
from monai_diffseg.networks.nets import MedSegDiff

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "uncertainty_artifacts.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("uncertainty_artifacts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _maps(mode: str, seed: int = 0) -> torch.Tensor:
    """``(6, 128, 128)`` random fields upsampled 16x from 8x8 with nearest (blocks) or bilinear, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(6, 1, 8, 8, generator=g)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    fields = F.interpolate(coarse, scale_factor=16, mode=mode, **kwargs)[:, 0]
    return fields + 0.01 * torch.randn(fields.shape, generator=g)


def test_measures_see_blocks_and_not_smooth_maps() -> None:
    art = _load_script()
    blocky, smooth = _maps("nearest"), _maps("bilinear")
    assert art.block_edge_ratio(blocky, 16) > 10.0
    assert art.block_edge_ratio(smooth, 16) < 1.5
    assert art.edge_spectrum_ratio(blocky, 16) > 5.0
    assert art.edge_spectrum_ratio(smooth, 16) < 1.5
    # the blocks are 16 px: a grid of another period does not line up with them
    assert art.block_edge_ratio(blocky, 12) < art.block_edge_ratio(blocky, 16) / 4
    # a strictly periodic pattern (the same tile everywhere) shows in the 2D spectrum at the lattice frequencies
    tile = torch.rand(16, 16, generator=torch.Generator().manual_seed(1))
    periodic = tile.repeat(8, 8)[None] + 0.1 * smooth[:1]
    assert art.peak_ratio_2d(periodic, 16) > 10.0
    assert art.peak_ratio_2d(smooth, 16) < 2.0
    with pytest.raises(ValueError, match="divisible"):
        art.edge_spectrum_ratio(torch.zeros(1, 30, 32), 16)


def test_background_mask() -> None:
    art = _load_script()
    label = torch.zeros(40, 40)
    label[10:14, 10:14] = 1
    pred = torch.zeros(40, 40)
    pred[30:32, 30:32] = 1
    bg = art.background_mask(label, pred, margin=0.1)  # 4 px
    assert not bg[6:18, 6:18].any() and not bg[26:36, 26:36].any()
    assert bg[0, 39] and bg[39, 0] and bg[22, 2]


def test_smoke_run(tmp_path: Path) -> None:
    art = _load_script()
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        image, mask = synthetic_lesion_sample(rng, (40, 48))
        Image.fromarray(image).save(data / "images" / f"case{i:02d}.png")
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(data / "masks" / f"case{i:02d}.png")
    net_args = {"channels": [8, 16], "cond_channels": [8, 16], "norm_num_groups": 4, "attention_levels": [False, False]}
    torch.manual_seed(0)
    torch.save(MedSegDiff(2, 3, 1, **net_args).state_dict(), tmp_path / "model.pt")
    output, png = tmp_path / "report.json", tmp_path / "png"
    report = art.main(
        [
            "--data",
            str(data),
            "--checkpoint",
            str(tmp_path / "model.pt"),
            "--network",
            json.dumps(net_args),
            "--image-size",
            "32",
            "--steps",
            "2",
            "--members",
            "3",
            "--png-dir",
            str(png),
            "--png-cases",
            "1",
            "--output",
            str(output),
        ]
    )
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    summary = report["summary"]
    assert summary["num_cases"] == len(report["cases"]) == 2 and summary["period"] == 4
    assert (report["steps"], report["members"]) == (2, 3)
    for key in ("bg_entropy", "edge_spectrum_ratio_p4", "edge_spectrum_ratio_p2", "block_edge_ratio"):
        assert np.isfinite(summary[key]), key
    assert sorted(p.name for p in png.iterdir()) == sorted(
        [
            f"{report['cases'][0]['case']}_montage.png",
            "entropy_power_spectrum.png",
            "entropy_row_difference_power_spectrum.png",
        ]
    )
