# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.networks.nets.MedSegDiff."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from monai_diffseg.networks.nets.medsegdiff import MEDSEGDIFF_CONFIGS, MedSegDiff

# two levels + stem stride 2 -> every spatial size must be divisible by 4
SMALL = {"channels": (8, 16), "cond_channels": (8, 16), "norm_num_groups": 8, "num_head_channels": 8}


def _net(spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 1, **kwargs) -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(spatial_dims, in_channels, out_channels, **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "spatial_dims,size,in_channels,out_channels",
    [
        (2, (16, 16), 1, 1),
        (2, (32, 48), 3, 1),
        (2, (12, 20), 4, 3),
        (2, (48, 32), 1, 3),
        (3, (16, 16, 32), 1, 3),
        (3, (8, 12, 16), 3, 1),
        (3, (8, 8, 12), 4, 3),
    ],
)
def test_output_shapes(spatial_dims: int, size: tuple, in_channels: int, out_channels: int) -> None:
    net = _net(spatial_dims, in_channels, out_channels)
    n = 2
    x_t = torch.randn(n, out_channels, *size)
    image = torch.randn(n, in_channels, *size)
    with torch.no_grad():
        out = net(x_t, torch.tensor([3, 700]), image)
        cond = net.encode_condition(image)
    assert out.shape == (n, out_channels, *size)
    assert torch.isfinite(out).all()
    # level l of the condition: (N, cond_channels[l], *S / (stem_stride * 2**l))
    assert len(cond) == 2
    for lvl, c in enumerate(cond):
        assert c.shape == (n, SMALL["cond_channels"][lvl], *(s // (2 * 2**lvl) for s in size))


def test_scalar_timestep_and_stem_stride_1() -> None:
    net = _net(stem_stride=1)
    assert net.size_divisor == 2
    x_t, image = torch.randn(2, 1, 6, 10), torch.randn(2, 3, 6, 10)
    with torch.no_grad():
        out_scalar = net(x_t, torch.tensor(5), image)
        out_vector = net(x_t, torch.tensor([5, 5]), image)
        cond = net.encode_condition(image)
    assert out_scalar.shape == (2, 1, 6, 10)
    assert torch.allclose(out_scalar, out_vector)
    assert cond[0].shape == (2, 8, 6, 10)


def test_cached_condition_is_bit_identical() -> None:
    net = _net().eval()
    x_t, image, t = torch.randn(3, 1, 16, 20), torch.randn(3, 3, 16, 20), torch.tensor([0, 10, 999])
    with torch.no_grad():
        direct = net(x_t, t, image=image)
        cached = net(x_t, t, condition=net.encode_condition(image))
        # the image is ignored when a condition is given
        cached_ignoring_image = net(x_t, t, image=torch.zeros_like(image), condition=net.encode_condition(image))
    assert torch.equal(direct, cached)
    assert torch.equal(direct, cached_ignoring_image)


@pytest.mark.parametrize("members", [2, 3])
def test_member_major_batching_equals_tiling(members: int) -> None:
    net = _net().eval()
    n = 2
    image = torch.randn(n, 3, 16, 16)
    x_t = torch.randn(members * n, 1, 16, 16)
    t = torch.randint(0, 1000, (members * n,))
    with torch.no_grad():
        batched = net(x_t, t, image=image)
        tiled = net(x_t, t, image=image.repeat(members, 1, 1, 1))  # row e * N + n -> image n
        looped = torch.cat([net(x_t[e * n : (e + 1) * n], t[e * n : (e + 1) * n], image=image) for e in range(members)])
    assert batched.shape == (members * n, 1, 16, 16)
    assert torch.allclose(batched, tiled, atol=1e-5, rtol=1e-4)
    assert torch.allclose(batched, looped, atol=1e-5, rtol=1e-4)
    # the layout is member-major: pairing x_t row 1 with image 0 (image-major) would give something else
    with torch.no_grad():
        wrong = net(x_t, t, image=image.repeat_interleave(members, dim=0))
    assert not torch.allclose(batched, wrong, atol=1e-3)


@pytest.mark.parametrize("spatial_dims,size", [(2, (16, 24)), (3, (8, 8, 12))])
def test_return_anchor(spatial_dims: int, size: tuple) -> None:
    net = _net(spatial_dims, 3, 3)
    image = torch.randn(2, 3, *size)
    x_t = torch.randn(4, 3, *size)  # two members per image
    with torch.no_grad():
        pred, anchor = net(x_t, torch.tensor([1, 2, 3, 4]), image, return_anchor=True)
    assert pred.shape == (4, 3, *size)
    assert anchor.shape == (2, 3, *size)
    no_anchor = _net(spatial_dims, 3, 3, anchor_head=False)
    with pytest.raises(ValueError, match="anchor_head=False"):
        no_anchor(x_t, torch.tensor(1), image, return_anchor=True)


def test_size_not_divisible_message() -> None:
    net = _net(channels=(8, 16, 32), cond_channels=(8, 16, 32))  # divisor 2 * 2**2 = 8
    assert net.size_divisor == 8
    with pytest.raises(ValueError) as err:
        net(torch.randn(1, 1, 16, 20), torch.tensor(1), torch.randn(1, 3, 16, 20))
    assert "(16, 20)" in str(err.value)
    assert "divisible by 8" in str(err.value)
    with pytest.raises(ValueError, match=r"\(12, 16\).*divisible by 8"):
        net.encode_condition(torch.randn(1, 3, 12, 16))


def test_wrong_image_channels_message() -> None:
    net = _net(in_channels=3)
    with pytest.raises(ValueError) as err:
        net(torch.randn(1, 1, 16, 16), torch.tensor(1), torch.randn(1, 1, 16, 16))
    msg = str(err.value)
    assert "(N, 3, *, *)" in msg and "(1, 1, 16, 16)" in msg


def test_wrong_mask_channels_and_mismatched_condition() -> None:
    net = _net(out_channels=1)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 1"):
        net(torch.randn(1, 2, 16, 16), torch.tensor(1), torch.randn(1, 3, 16, 16))
    cond = net.encode_condition(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of the image batch"):
        net(torch.randn(3, 1, 16, 16), torch.tensor(1), condition=cond)
    with pytest.raises(ValueError, match="same spatial shape"):
        net(torch.randn(2, 1, 16, 24), torch.tensor(1), condition=cond)


def test_missing_image_and_condition() -> None:
    net = _net()
    with pytest.raises(ValueError, match="either `image` or a precomputed `condition`"):
        net(torch.randn(1, 1, 16, 16), torch.tensor(1))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        MedSegDiff(1, 3, 1, **SMALL)
    with pytest.raises(ValueError, match="same number"):
        MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="norm_num_groups"):
        MedSegDiff(2, 3, 1, channels=(12, 16), cond_channels=(8, 16), norm_num_groups=8)


def test_jit_trace_matches_eager() -> None:
    net = _net().eval()
    x_t, t, image = torch.randn(2, 1, 16, 16), torch.tensor([3, 500]), torch.randn(2, 3, 16, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent python branches
        traced = torch.jit.trace(net, (x_t, t, image), check_trace=False)
        x_new, t_new = torch.randn_like(x_t), torch.tensor([7, 900])
        assert torch.allclose(traced(x_t, t, image), net(x_t, t, image), atol=1e-6)
        assert torch.allclose(traced(x_new, t_new, image), net(x_new, t_new, image), atol=1e-6)


# (total parameters, denoiser parameters) copied by hand from the table in the MedSegDiff class docstring
# (monai_diffseg/networks/nets/medsegdiff.py, "Configurations"); 2D, 3 image channels, 1 mask channel.
DOCSTRING_PARAMS = {"tiny": (0.85e6, 0.36e6), "small": (3.38e6, 1.44e6), "base": (16.60e6, 8.86e6)}


@pytest.mark.parametrize("name", sorted(DOCSTRING_PARAMS))
def test_config_parameter_counts_match_docstring(name: str) -> None:
    net = MedSegDiff(2, 3, 1, **MEDSEGDIFF_CONFIGS[name])
    total = sum(p.numel() for p in net.parameters())
    denoiser = sum(
        p.numel() for k, p in net.named_parameters() if not k.startswith(("condition_encoder.", "anchor_head."))
    )
    expected_total, expected_denoiser = DOCSTRING_PARAMS[name]
    assert abs(total - expected_total) / expected_total < 0.05, f"{name}: {total} parameters"
    assert abs(denoiser - expected_denoiser) / expected_denoiser < 0.05, f"{name}: denoiser {denoiser}"


def test_gradients_reach_condition_encoder_and_denoiser() -> None:
    net = _net().train()
    image, x_t, t = torch.randn(2, 3, 16, 16), torch.randn(2, 1, 16, 16), torch.tensor([10, 400])
    pred = net(x_t, t, image)
    F.mse_loss(pred, torch.randn_like(pred)).backward()  # diffusion loss only: no anchor term
    grads = {k: p.grad for k, p in net.named_parameters()}
    cond = [g for k, g in grads.items() if k.startswith("condition_encoder.")]
    assert cond and all(g is not None for g in cond)
    assert sum(float(g.abs().sum()) for g in cond) > 0
    for prefix in ("in_conv.", "stem.", "fusions.", "ff_parsers.", "out."):
        part = [g for k, g in grads.items() if k.startswith(prefix)]
        assert part and all(g is not None for g in part), prefix
        assert sum(float(g.abs().sum()) for g in part) > 0, prefix
    # the anchor head is trained through forward(return_anchor=True)
    net.zero_grad()
    pred, anchor = net(x_t, t, image, return_anchor=True)
    (pred.mean() + anchor.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.anchor_head.parameters())
