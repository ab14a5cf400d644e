# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.inferers.diffusion_slice: slice-by-slice sampling of a 2D network over 3D volumes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from monai_diffseg.inferers import DiffusionSegmentationInferer, DiffusionSliceInferer, DiffusionSlidingWindowInferer
from monai_diffseg.networks.nets.medsegdiff import MedSegDiff

E, STEPS, SEED = 3, 2, 11
TOL = {"atol": 1e-4, "rtol": 1e-4}  # batched and single-slice convolutions differ in the last bits


def _net(out_channels: int = 3) -> MedSegDiff:
    torch.manual_seed(0)
    net = MedSegDiff(2, 4, out_channels, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4)
    return net.eval()  # size_divisor 4


@pytest.fixture(scope="module")
def net() -> MedSegDiff:
    return _net()


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    """(1, 4, 16, 12, 6): an empty first and last axial slice (outside the brain), a partly empty slice 1."""
    vol = torch.randn(1, 4, 16, 12, 6, generator=torch.Generator().manual_seed(3))
    vol[..., 0] = 0
    vol[..., -1] = 0
    vol[:, :, :8, :, 1] = 0
    return vol


def _slicer(**kwargs) -> DiffusionSliceInferer:
    args = {"num_inference_steps": STEPS, "num_samples": E, "seed": SEED, "multi_label": True, "return_samples": True}
    return DiffusionSliceInferer(DDIMScheduler(1000), **{**args, **kwargs})


def _manual(volume: torch.Tensor, net: MedSegDiff, eta: float = 0.0, skip: bool = True) -> torch.Tensor:
    """A loop over axial slices with the non-windowed inferer, slice z seeded SEED + z * E; empty slices 0."""
    ref = DiffusionSegmentationInferer(
        DDIMScheduler(1000), num_inference_steps=STEPS, num_samples=E, multi_label=True, eta=eta
    )
    out = []
    for z in range(volume.shape[-1]):
        plane = volume[..., z]
        if skip and not bool(plane.any()):
            out.append(torch.zeros(1, E, 3, *plane.shape[2:]))
        else:
            out.append(ref.sample(plane, net, seed=SEED + z * E))
    return torch.stack(out, dim=-1)


@pytest.mark.parametrize("sw_batch_size", [1, 4])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_equals_a_loop_over_slices(net: MedSegDiff, volume: torch.Tensor, sw_batch_size: int, eta: float) -> None:
    """Batched slices, skipped empty slices and stochastic DDIM steps: every slice is the 2D inferer on that slice with
    its own seeds, whatever the batch of slices it was sampled in."""
    out = _slicer(sw_batch_size=sw_batch_size, eta=eta)(volume, net)
    assert out.shape == (1, E, 3, 16, 12, 6)
    torch.testing.assert_close(out, _manual(volume, net, eta=eta), **TOL)
    assert out[..., 0].abs().max() == 0 and out[..., 1].abs().max() > 0  # skipped / partly empty but sampled


def test_without_skipping_every_slice_is_sampled(net: MedSegDiff, volume: torch.Tensor) -> None:
    out = _slicer(skip_background=False, sw_batch_size=3)(volume, net)
    torch.testing.assert_close(out, _manual(volume, net, skip=False), **TOL)
    assert out[..., 0].max() > 0  # an empty slice sampled: probabilities (x0 + 1) / 2, not all 0
    torch.testing.assert_close(out[..., 1:-1], _slicer()(volume, net)[..., 1:-1], **TOL)  # skipping shifts no seed


def test_fused_output_is_the_member_mean(net: MedSegDiff, volume: torch.Tensor) -> None:
    samples = _slicer()(volume, net)
    fused = _slicer(return_samples=False)(volume, net)
    torch.testing.assert_close(fused, samples.mean(dim=1))


def test_other_slicing_axis(net: MedSegDiff, volume: torch.Tensor) -> None:
    """spatial_dim=0 on a volume equals the axial inferer on the volume with that axis moved last."""
    moved = volume.permute(0, 1, 3, 4, 2)  # (1, 4, 12, 6, 16): H becomes the last axis
    axial = _slicer(skip_background=False)(moved, net)  # in-plane 12x6 -> padded to 12x8
    sagittal = _slicer(spatial_dim=0, skip_background=False)(volume, net)
    torch.testing.assert_close(sagittal, axial.permute(0, 1, 2, 5, 3, 4), **TOL)


def test_whole_slice_window_pads_to_the_divisor(net: MedSegDiff) -> None:
    """roi_size=None pads a 14x10 slice to the network's multiple of 4 (16x12): the same as that roi given."""
    vol = torch.randn(1, 4, 14, 10, 3, generator=torch.Generator().manual_seed(5))
    auto = _slicer()
    assert auto.slice_roi_size(vol.shape[2:], net) == (16, 12)
    out = auto(vol, net)
    assert out.shape == (1, E, 3, 14, 10, 3)
    torch.testing.assert_close(out, _slicer(roi_size=(16, 12))(vol, net))


def test_windows_inside_a_large_slice(net: MedSegDiff, volume: torch.Tensor) -> None:
    """A roi smaller than the slice slides in-plane windows (MONAI's SliceInferer); windows are numbered for seeds."""
    out = _slicer(roi_size=(8, 12), overlap=0.0)(volume, net)
    assert out.shape == (1, E, 3, 16, 12, 6)
    ref = DiffusionSegmentationInferer(DDIMScheduler(1000), num_inference_steps=STEPS, num_samples=E, multi_label=True)
    # MONAI's window order, the slicing axis fastest: rows 0:8 are windows 0-5, rows 8:16 windows 6-11 (z = 2: 8)
    upper = ref.sample(volume[:, :, 8:, :, 2], net, seed=SEED + (6 + 2) * E)
    torch.testing.assert_close(out[:, :, :, 8:, :, 2], upper, **TOL)


def test_one_hot_classes_skip_to_background(volume: torch.Tensor) -> None:
    out = _slicer(multi_label=False)(volume, _net(out_channels=2))
    torch.testing.assert_close(out[:, :, 0, ..., 0], torch.ones_like(out[:, :, 0, ..., 0]))
    torch.testing.assert_close(out.sum(dim=2), torch.ones_like(out.sum(dim=2)))  # renormalised classes everywhere


def test_errors_name_the_fix(net: MedSegDiff) -> None:
    with pytest.raises(ValueError, match="DiffusionSegmentationInferer"):
        _slicer()(torch.randn(1, 4, 16, 16), net)
    with pytest.raises(ValueError, match="roi_size"):
        _slicer(roi_size=(16, 16, 1))
    with pytest.raises(ValueError, match="spatial_dim"):
        _slicer(spatial_dim=3)
    # the window options are checked by the sliding-window inferer it extends
    with pytest.raises(ValueError, match="sw_batch_size must be >= 1, got 0"):
        _slicer(sw_batch_size=0)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\), got 1.0"):
        _slicer(overlap=1.0)


def test_window_progress_reads_command_line_words() -> None:
    """A bundle's `--progress false` arrives as the string "false": off for the bar over windows too."""
    assert _slicer(progress="false").window_progress is False
    assert _slicer(progress=True).window_progress is True
    window = DiffusionSlidingWindowInferer(DDIMScheduler(1000), roi_size=8, progress="false")
    assert window.window_progress is False and window.progress is False
