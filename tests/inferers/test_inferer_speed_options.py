# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Speed options of the ensemble sampler (chunking, autocast, channels_last, compile) and sliding-window sampling."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from monai_diffseg.inferers import (
    DiffusionSegmentationInferer,
    DiffusionSlidingWindowInferer,
    memory_aware_member_chunk,
)
from monai_diffseg.networks.nets.medsegdiff import MedSegDiff


def _net(spatial_dims: int = 2, in_channels: int = 3) -> MedSegDiff:
    torch.manual_seed(0)
    net = MedSegDiff(
        spatial_dims,
        in_channels,
        1,
        channels=(8, 16),
        cond_channels=(8, 16),
        norm_num_groups=8,
        num_head_channels=8,
    )
    return net.eval()


@pytest.fixture()
def image() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def _inferer(**kwargs) -> DiffusionSegmentationInferer:
    kwargs.setdefault("num_samples", 3)
    return DiffusionSegmentationInferer(DDIMScheduler(1000), 4, seed=0, return_samples=True, **kwargs)


def test_memory_aware_member_chunk() -> None:
    assert memory_aware_member_chunk(10, bytes_per_member=100, free_bytes=1000) == 8  # 0.8 * 1000 // 100
    assert memory_aware_member_chunk(5, bytes_per_member=100, free_bytes=1000) == 5  # never more than E
    assert memory_aware_member_chunk(5, bytes_per_member=1e9, free_bytes=1000) == 1  # never fewer than 1
    assert memory_aware_member_chunk(5, bytes_per_member=100, free_bytes=1000, fraction=0.25) == 2
    with pytest.raises(ValueError, match="members"):
        memory_aware_member_chunk(0, 1, 1)
    with pytest.raises(ValueError, match="fraction"):
        memory_aware_member_chunk(3, 1, 1, fraction=1.5)


def _counting(net: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every forward call of ``net``."""
    calls: list[int] = []
    forward = net.forward

    def counting_forward(x, *args, **kwargs):
        calls.append(x.shape[0])
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(net, "forward", counting_forward)
    return calls


def test_auto_member_batch_size_on_cpu_runs_all_members(image: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    calls = _counting(net, monkeypatch)
    out = _inferer(member_batch_size="auto")(image, net)
    assert calls == [3 * 2] * 4  # every step: all 3 members of both images in one call
    assert torch.allclose(out, _inferer()(image, _net()), atol=1e-6)


@pytest.mark.parametrize("bad", ["half", 0, -2])
def test_invalid_member_batch_size(bad) -> None:
    with pytest.raises(ValueError, match="member_batch_size"):
        _inferer(member_batch_size=bad)


def test_autocast_bf16_close_to_fp32(image: torch.Tensor) -> None:
    net = _net()
    ref = _inferer()(image, net)
    out = _inferer(autocast="bf16")(image, net)
    assert out.dtype == torch.float32
    assert not torch.equal(out, ref)  # the option really changed the arithmetic
    assert (out - ref).abs().mean() < 0.02


def test_invalid_autocast() -> None:
    with pytest.raises(ValueError, match="fp8"):
        _inferer(autocast="fp8")


def test_channels_last_same_output_and_caller_network_untouched(image: torch.Tensor) -> None:
    net = _net()
    ref = _inferer()(image, net)
    strides = {k: v.stride() for k, v in net.state_dict().items()}
    inferer = _inferer(channels_last=True)
    out = inferer(image, net)
    assert {k: v.stride() for k, v in net.state_dict().items()} == strides  # the caller's network is not converted
    copy, _ = inferer._prepared[net]
    conv_weights = [m.weight for m in copy.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert conv_weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
    assert torch.allclose(out, ref, atol=1e-4)
    # the cached copy follows the caller's weights: change them, and the next call samples with the new ones
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)
    assert not torch.allclose(_inferer()(image, net), ref, atol=1e-3)
    assert torch.allclose(inferer(image, net), _inferer()(image, net), atol=1e-4)


def test_compile_same_output_and_cached(image: torch.Tensor) -> None:
    net = _net()
    ref = _inferer()(image, net)
    inferer = _inferer(compile=True, compile_kwargs={"backend": "eager"})
    out = inferer(image, net)
    inferer(image, net)
    assert len(inferer._prepared) == 1  # compiled once per network, reused across calls
    assert torch.allclose(out, ref, atol=1e-5)


def test_cuda_graphs_warns_on_cpu(image: torch.Tensor) -> None:
    inferer = _inferer(cuda_graphs=True, compile_kwargs={"backend": "eager"})
    with pytest.warns(UserWarning, match="CUDA"):
        out = inferer(image, _net())
    assert out.shape == (2, 3, 1, 16, 16)


def test_sliding_window_single_window_equals_plain_sampler(image: torch.Tensor) -> None:
    net = _net()
    image = image[:1]  # windows are numbered across the batch, so only the first image shares the plain seeds
    plain = _inferer()(image, net)
    sw = DiffusionSlidingWindowInferer(
        DDIMScheduler(1000),
        roi_size=(16, 16),
        num_inference_steps=4,
        num_samples=3,
        seed=0,
        return_samples=True,
        overlap=0.0,
        mode="constant",
    )
    assert torch.allclose(sw(image, net), plain, atol=1e-6)


def test_sliding_window_3d_members_batched_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net(spatial_dims=3, in_channels=1)
    calls = _counting(net, monkeypatch)
    volume = torch.randn(1, 1, 24, 16, 20, generator=torch.Generator().manual_seed(1))
    steps, members = 3, 4
    inferer = DiffusionSlidingWindowInferer(
        DDIMScheduler(1000),
        roi_size=(16, 16, 16),
        num_inference_steps=steps,
        num_samples=members,
        seed=5,
        return_samples=True,
        overlap=0.25,
    )
    out = inferer(volume, net)
    assert out.shape == (1, members, 1, 24, 16, 20)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # windows along (24, 20) with roi 16 and 25% overlap: 2 x 1 x 2 = 4 windows, each one batch of all members
    assert calls == [members] * (4 * steps)
    assert torch.equal(out, inferer(volume, net))  # seeded: reproducible
    # the members are different samples
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3


def test_sliding_window_invalid_args() -> None:
    with pytest.raises(ValueError, match="overlap"):
        DiffusionSlidingWindowInferer(DDIMScheduler(1000), roi_size=16, overlap=1.0)
    with pytest.raises(ValueError, match="sw_batch_size"):
        DiffusionSlidingWindowInferer(DDIMScheduler(1000), roi_size=16, sw_batch_size=0)
