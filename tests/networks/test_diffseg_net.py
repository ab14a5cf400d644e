# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""DiffSegDenoiser / DiffSegPair: shapes, size checks, channel checks, trace, and that it can fit."""

from __future__ import annotations

import pytest
import torch

from monai_diffseg.networks.nets import DIFFSEG_CONFIGS, DiffSegDenoiser, DiffSegPair


@pytest.mark.parametrize("stem_stride", [1, 2])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes(stem_stride: int, in_channels: int) -> None:
    torch.manual_seed(0)
    net = DiffSegDenoiser(in_channels=in_channels, channels=(8, 16), stem_stride=stem_stride)
    assert net.size_divisor == stem_stride * 2
    x = torch.randn(2, in_channels, 16, 24)
    out = net(x, torch.tensor([3, 500]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert net(x, torch.tensor(7)).shape == x.shape  # scalar t broadcast


def test_3d() -> None:
    net = DiffSegDenoiser(spatial_dims=3, in_channels=1, channels=(8, 16))
    assert net(torch.randn(1, 1, 8, 8, 8), torch.tensor([10])).shape == (1, 1, 8, 8, 8)


def test_configs_build() -> None:
    assert DiffSegDenoiser(**DIFFSEG_CONFIGS["tiny"]).size_divisor == 8


def test_bad_inputs_are_clear_errors() -> None:
    net = DiffSegDenoiser(in_channels=3, channels=(8, 16, 32))
    with pytest.raises(ValueError, match=r"divisible by 8.*\(12, 16\)"):
        net(torch.randn(1, 3, 12, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*grayscale"):
        net(torch.randn(1, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="stem_stride"):
        DiffSegDenoiser(stem_stride=3)
    with pytest.raises(ValueError, match="norm_num_groups"):
        DiffSegDenoiser(channels=(12, 16), norm_num_groups=8)


def test_pair_returns_both_and_traces() -> None:
    torch.manual_seed(0)
    lesion, healthy = DiffSegDenoiser(channels=(8, 16)), DiffSegDenoiser(channels=(8, 16))
    pair = DiffSegPair(lesion, healthy).eval()
    assert pair.in_channels == 3 and pair.size_divisor == 4
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([60, 70])
    a, b = pair(x, t)
    assert torch.allclose(a, lesion(x, t)) and torch.allclose(b, healthy(x, t))
    assert not torch.allclose(a, b)
    traced = torch.jit.trace(lesion.eval(), (x, t))
    assert torch.allclose(traced(x, t), lesion(x, t), atol=1e-5)


def test_learns_x0_of_a_constant_image() -> None:
    """A few optimisation steps reduce the x0 error: gradients reach every part that matters."""
    torch.manual_seed(0)
    net = DiffSegDenoiser(channels=(8, 16))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x0 = torch.full((4, 3, 16, 16), 0.5)
    losses = []
    for _ in range(30):
        x_t = x0 + 0.3 * torch.randn_like(x0)
        loss = torch.nn.functional.mse_loss(net(x_t, torch.full((4,), 100)), x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
