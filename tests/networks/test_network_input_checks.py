# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Input checks at the networks' API boundary: NaN/Inf named by batch item, timesteps, dtypes; tracing unaffected."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.networks.nets import DiffSegDenoiser, DiffSegPair
from monai_diffseg.networks.nets.medsegdiff import MedSegDiff

SIZE = (16, 16)


def _medsegdiff() -> MedSegDiff:
    torch.manual_seed(0)
    return MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=8, num_head_channels=8).eval()


def _denoiser() -> DiffSegDenoiser:
    torch.manual_seed(0)
    return DiffSegDenoiser(channels=(8, 16)).eval()


def _with(x: torch.Tensor, item: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[item, 0, 3, 5] = value
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_medsegdiff_non_finite_image_names_the_item(value: float) -> None:
    net = _medsegdiff()
    image = _with(torch.rand(3, 3, *SIZE), 1, value)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"MedSegDiff.encode_condition: image .*batch item\(s\) \[1\] of 3"):
            net(torch.randn(3, 1, *SIZE), torch.tensor([1, 2, 3]), image)
        with pytest.raises(ValueError, match=r"image .*batch item\(s\) \[1\] of 3"):
            net.encode_condition(image)


def test_medsegdiff_non_finite_image_names_the_file() -> None:
    image = MetaTensor(_with(torch.rand(2, 3, *SIZE), 0, float("nan")))
    image.meta["filename_or_obj"] = ["/data/ISIC_0000001.jpg", "/data/ISIC_0000002.jpg"]
    image.is_batch = True
    with pytest.raises(ValueError, match=r"\[0\] \(/data/ISIC_0000001.jpg\) of 2"):
        _medsegdiff().encode_condition(image)


def test_medsegdiff_non_finite_x_t_names_member_and_image() -> None:
    net = _medsegdiff()
    image = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        cond = net.encode_condition(image)
        x_t = _with(torch.randn(6, 1, *SIZE), 5, float("nan"))  # row 5 = member 2 of image 1 (member-major)
        with pytest.raises(ValueError, match=r"x_t .*batch item\(s\) \[5\] \(member 2 of image 1\) of 6.*fp16"):
            net(x_t, torch.tensor(10), condition=cond)
        with pytest.raises(ValueError, match=r"x_t .*1 NaN, 0 Inf.*\[0\] of 2"):
            net(_with(torch.randn(2, 1, *SIZE), 0, float("nan")), torch.tensor(10), image)


def test_medsegdiff_timesteps() -> None:
    net = _medsegdiff()
    x_t, image = torch.randn(2, 1, *SIZE), torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"timesteps must be >= 0 .*got \[-1\] at batch item\(s\) \[1\]"):
            net(x_t, torch.tensor([3, -1]), image)
        with pytest.raises(ValueError, match=r"got \[nan\] at batch item\(s\) \[0\]"):
            net(x_t, torch.tensor([float("nan"), 4.0]), image)
        with pytest.raises(ValueError, match=r"scalar tensor or have shape \(2,\).*got shape \(3,\)"):
            net(x_t, torch.tensor([1, 2, 3]), image)
        with pytest.raises(TypeError, match="timesteps must be a torch.Tensor"):
            net(x_t, 5, image)  # type: ignore[arg-type]
        # scalar and (1,) steps broadcast as before
        assert torch.allclose(net(x_t, torch.tensor(7), image), net(x_t, torch.tensor([7]), image), atol=1e-6)


def test_medsegdiff_dtypes() -> None:
    net = _medsegdiff()
    x_t, image, t = torch.randn(2, 1, *SIZE), torch.rand(2, 3, *SIZE), torch.tensor([3, 9])
    with torch.no_grad():
        ref = net(x_t, t, image)
        # float64 is cast to the parameters' float32: same result, float32 output
        out = net(x_t.double(), t, image.double())
        assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-6)
        with pytest.raises(TypeError, match=r"image has dtype torch.uint8.*ScaleIntensityd.*EnsureTyped"):
            net(x_t, t, (image * 255).to(torch.uint8))
        with pytest.raises(TypeError, match=r"x_t has dtype torch.int64.*noisy mask"):
            net(x_t.long(), t, image)


def test_checks_are_skipped_when_tracing_and_traces_still_match() -> None:
    net = _medsegdiff()
    x_t, t, image = torch.randn(2, 1, *SIZE), torch.tensor([3, 500]), torch.rand(2, 3, *SIZE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (x_t, t, image), check_trace=False)
        assert torch.allclose(traced(x_t, t, image), net(x_t, t, image), atol=1e-6)
        # the traced graph holds no data-dependent check (it would have frozen one branch): NaN passes through
        assert torch.isnan(traced(_with(x_t, 0, float("nan")), t, image)).any()
    with pytest.raises(ValueError, match="x_t"):
        net(_with(x_t, 0, float("nan")), t, image)


def test_medsegdiff_exports() -> None:
    net = _medsegdiff()
    x_t, t, image = torch.randn(2, 1, *SIZE), torch.tensor([3, 500]), torch.rand(2, 3, *SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (x_t, t, image))
    assert torch.allclose(program.module()(x_t, t, image), net(x_t, t, image), atol=1e-5)


def test_diffseg_denoiser_checks() -> None:
    net = _denoiser()
    x, t = torch.rand(3, 3, *SIZE), torch.tensor([60, 70, 80])
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"DiffSegDenoiser.forward: x .*batch item\(s\) \[0, 2\] of 3"):
            net(_with(_with(x, 0, float("inf")), 2, float("nan")), t)
        with pytest.raises(ValueError, match=r"DiffSegDenoiser.forward: timesteps must be >= 0.*\[-5\]"):
            net(x, torch.tensor([60, -5, 80]))
        with pytest.raises(TypeError, match=r"x has dtype torch.uint8.*ScaleIntensityd"):
            net((x * 255).to(torch.uint8), t)
        out = net(x.double(), t)
        assert out.dtype == torch.float32 and torch.allclose(out, net(x, t), atol=1e-6)
        # the pair checks through its members
        pair = DiffSegPair(net, _denoiser())
        with pytest.raises(ValueError, match=r"batch item\(s\) \[1\] of 3"):
            pair(_with(x, 1, float("nan")), t)


@pytest.mark.parametrize("strict", [False, True])
def test_diffseg_denoiser_exports(strict: bool) -> None:
    net = _denoiser()
    x, t = torch.rand(2, 3, *SIZE), torch.tensor([60, 70])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (x, t), strict=strict)
    assert torch.allclose(program.module()(x, t), net(x, t), atol=1e-5)
