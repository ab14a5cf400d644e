# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.networks.blocks.FFParser."""

from __future__ import annotations

import pytest
import torch

from monai_diffseg.networks.blocks.ff_parser import FFParser


@pytest.mark.parametrize(
    "spatial_dims,size",
    [(2, (16, 16)), (2, (15, 20)), (2, (7, 33)), (3, (8, 9, 10)), (3, (16, 16, 16)), (3, (5, 6, 7))],
)
def test_identity_at_init(spatial_dims: int, size: tuple) -> None:
    block = FFParser(spatial_dims, channels=4, weight_size=16)  # (16, 16[, 16]) equals the weight grid
    x = torch.randn(2, 4, *size)
    out = block(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("spatial_dims,size", [(2, (15, 20)), (3, (8, 9, 10))])
def test_perturbed_weights_change_output(spatial_dims: int, size: tuple) -> None:
    torch.manual_seed(0)
    block = FFParser(spatial_dims, channels=3, weight_size=8)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        block.weight_real.add_(0.5 * torch.randn_like(block.weight_real))
        block.weight_imag.add_(0.5 * torch.randn_like(block.weight_imag))
    out = block(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, x, atol=1e-2)
    # the weights are learnable: the output depends on them differentiably
    out.square().mean().backward()
    assert block.weight_real.grad is not None and block.weight_real.grad.abs().sum() > 0
    assert block.weight_imag.grad is not None and block.weight_imag.grad.abs().sum() > 0


def _low_pass(block: FFParser, cutoff: int) -> None:
    """Zero every centred-grid frequency with |f| > cutoff along any dim (the last dim holds f = 0 .. size // 2)."""
    grid = block.weight_real.shape[1:]
    coords = []
    for d, n in enumerate(grid):
        idx = torch.arange(n)
        coords.append(idx if d == len(grid) - 1 else idx - n // 2)  # full dims are fftshift-ed: centre = DC
    mesh = torch.meshgrid(*coords, indexing="ij")
    keep = torch.stack([m.abs() <= cutoff for m in mesh]).all(0).float()
    with torch.no_grad():
        block.weight_real.copy_(keep.expand_as(block.weight_real))
        block.weight_imag.zero_()


def _high_freq_energy(x: torch.Tensor, spatial_dims: int) -> float:
    dims = tuple(range(2, 2 + spatial_dims))
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)
    centre = [n // 2 for n in x.shape[2:]]
    coords = torch.meshgrid(*[torch.arange(n) - c for n, c in zip(x.shape[2:], centre)], indexing="ij")
    high = torch.stack([c.abs() > n // 4 for c, n in zip(coords, x.shape[2:])]).any(0)
    return float(spectrum.abs().square()[..., high].sum())


@pytest.mark.parametrize("spatial_dims,size", [(2, (16, 16)), (2, (32, 24)), (3, (16, 16, 16)), (3, (12, 10, 8))])
def test_low_pass_weight_removes_checkerboard(spatial_dims: int, size: tuple) -> None:
    block = FFParser(spatial_dims, channels=2, weight_size=16)
    _low_pass(block, cutoff=4)
    grids = torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij")
    checker = (sum(grids) % 2).float() * 2 - 1  # highest frequency in every dim
    smooth = torch.linspace(-1, 1, size[0]).reshape(-1, *([1] * (spatial_dims - 1))).expand(*size)
    x = torch.stack([checker, checker + smooth])[None]
    with torch.no_grad():
        out = block(x)
    before, after = _high_freq_energy(x, spatial_dims), _high_freq_energy(out, spatial_dims)
    assert before > 0
    assert after < 1e-3 * before
    # the low-frequency content survives
    assert float(out[0, 1].abs().mean()) > 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype(dtype: torch.dtype) -> None:
    block = FFParser(2, channels=2, weight_size=8)
    x = torch.randn(1, 2, 15, 20).to(dtype)
    out = block(x)
    assert out.dtype == dtype
    assert torch.allclose(out.float(), x.float(), atol=1e-2)


def test_autocast_keeps_dtype() -> None:
    block = FFParser(2, channels=2, weight_size=8)
    x = torch.randn(1, 2, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, x, atol=1e-5)


def test_wrong_channel_count() -> None:
    block = FFParser(2, channels=4)
    with pytest.raises(ValueError, match=r"expected 4 channels.*\(1, 3, 16, 16\)"):
        block(torch.randn(1, 3, 16, 16))


def test_bad_spatial_dims() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        FFParser(4, channels=2)


def _random_weights(block: FFParser, seed: int = 0) -> FFParser:
    """Weights far from identity, as a long training might leave them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        block.weight_real.add_(0.5 * torch.randn(block.weight_real.shape, generator=g))
        block.weight_imag.add_(0.5 * torch.randn(block.weight_imag.shape, generator=g))
    return block


@pytest.mark.parametrize("spatial_dims,size", [(2, (64, 64)), (2, (24, 40)), (2, (8, 8)), (3, (12, 10, 8))])
def test_constant_input_gives_constant_output(spatial_dims: int, size: tuple) -> None:
    """No grid-locked pattern from the frequency filter, whatever the weights and the resampling to ``size``."""
    block = _random_weights(FFParser(spatial_dims, channels=3, weight_size=16))
    x = torch.full((2, 3, *size), 0.7)
    with torch.no_grad():
        out = block(x)
    flat = out.flatten(2)
    assert torch.allclose(flat, flat[..., :1].expand_as(flat), atol=1e-5)


@pytest.mark.parametrize("spatial_dims,size", [(2, (64, 64)), (2, (24, 40)), (3, (12, 10, 8))])
def test_shift_equivariant(spatial_dims: int, size: tuple) -> None:
    """
    The FF-Parser is a (circular) convolution at every input size: shifting the input by one pixel shifts the output
    by one pixel. A block lattice needs a response that changes with the position inside a period, which this rules
    out (the lattice of issue 10 came from nearest-neighbour upsampling in the decoder, see test_medsegdiff_upsampling).
    """
    block = _random_weights(FFParser(spatial_dims, channels=2, weight_size=16), seed=1)
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(2))
    dims = tuple(range(2, 2 + spatial_dims))
    shifts = (1,) * spatial_dims
    with torch.no_grad():
        assert torch.allclose(block(torch.roll(x, shifts, dims)), torch.roll(block(x), shifts, dims), atol=1e-5)


@pytest.mark.parametrize("spatial_dims,size", [(2, (64, 64)), (2, (8, 8)), (2, (24, 15)), (3, (32, 12, 7))])
def test_zero_frequency_gain_at_any_size(spatial_dims: int, size: tuple) -> None:
    """A constant input is scaled by the grid's zero-frequency entry, whatever the input size."""
    block = _random_weights(FFParser(spatial_dims, channels=2, weight_size=16))
    centre = (slice(None),) + (8,) * (spatial_dims - 1) + (0,)
    with torch.no_grad():
        out = block(torch.ones(1, 2, *size))
    expected = block.weight_real[centre].detach()  # the imaginary part of the DC term cancels in irfftn
    assert torch.allclose(out.flatten(2).mean(-1)[0], expected, atol=1e-5)


def test_grid_entries_keep_their_frequency() -> None:
    """At twice the grid size, every other frequency reads a grid entry exactly (``f * n + n // 2``)."""
    block = _random_weights(FFParser(2, channels=1, weight_size=8))
    weight = block._weight((16, 9), (16, 16)).detach()  # unshifted, fftfreq order
    grid = torch.complex(block.weight_real, block.weight_imag).detach()
    for k in range(-8, 8, 2):  # frequency k / 16 = (k / 2) / 8: grid row k // 2 + 4
        for m in range(0, 9, 2):  # frequency m / 16 = (m / 2) / 8: grid column m // 2
            assert torch.allclose(weight[0, k % 16, m], grid[0, k // 2 + 4, m // 2], atol=1e-6)


def _legacy(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("grid_version")}


def test_legacy_checkpoint_keeps_its_mapping() -> None:
    trained = _random_weights(FFParser(2, channels=2, weight_size=16))
    x = torch.randn(1, 2, 40, 24)
    block = FFParser(2, channels=2, weight_size=16)
    with pytest.warns(UserWarning, match="grid_version"):
        block.load_state_dict(_legacy(trained.state_dict()))  # strict
    assert int(block.grid_version) == 0
    spectrum = torch.fft.rfftn(x, dim=(2, 3), norm="ortho") * trained._legacy_weight((40, 13))
    with torch.no_grad():
        assert torch.allclose(block(x), torch.fft.irfftn(spectrum, s=(40, 24), dim=(2, 3), norm="ortho"), atol=1e-5)
        assert not torch.allclose(block(x), trained(x), atol=1e-3)  # the mappings differ at this size


def test_new_checkpoint_round_trip() -> None:
    trained = _random_weights(FFParser(3, channels=2, weight_size=8))
    block = FFParser(3, channels=2, weight_size=8)
    block.load_state_dict(trained.state_dict())
    x = torch.randn(1, 2, 6, 10, 12)
    with torch.no_grad():
        assert torch.equal(block(x), trained(x))
    state = trained.state_dict()
    state["grid_version"] = torch.tensor(9)
    with pytest.raises(RuntimeError, match="grid version"):
        block.load_state_dict(state)
