# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the pure PyTorch dense CRF module (its transform, both backends: tests/transforms/test_dense_crf.py)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch

from monai_diffseg.networks.blocks.torch_crf import TorchDenseCRF


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Small tensors: avoid OpenMP spin-waiting when the CPU cores are shared with other processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _brute_force_step(prob: torch.Tensor, guide: torch.Tensor, crf: TorchDenseCRF) -> torch.Tensor:
    """One mean-field step with dense ``(V, V)`` kernel matrices built voxel pair by voxel pair (2D, one case)."""
    (h, w), eps = prob.shape[2:], crf.eps
    labels = torch.cat([1 - prob, prob], 1)[0].reshape(2, -1).double().clamp(eps, 1 - eps)  # (L, V)
    g_sigma, b_sigma = crf.spatial_sigmas(2)
    g_tail = [int(s * crf.gaussian_truncate + 0.5) for s in g_sigma]  # MONAI's gaussian_1d rounding
    window, dilation = crf._window(2)
    taps = {(i - window // 2) * dilation for i in range(window)}
    feats = guide[0].reshape(guide.shape[1], -1).double() / crf.bilateral_srgb  # (Cg, V)
    k_g = torch.zeros(h * w, h * w, dtype=torch.float64)
    k_b = torch.zeros_like(k_g)
    for (y0, x0), (y1, x1) in itertools.product(itertools.product(range(h), range(w)), repeat=2):
        i, j, dy, dx = y0 * w + x0, y1 * w + x1, y1 - y0, x1 - x0
        if abs(dy) <= g_tail[0] and abs(dx) <= g_tail[1]:
            k_g[i, j] = math.exp(-0.5 * ((dy / g_sigma[0]) ** 2 + (dx / g_sigma[1]) ** 2))
        if dy in taps and dx in taps:
            spatial = 0.5 * ((dy / b_sigma[0]) ** 2 + (dx / b_sigma[1]) ** 2)
            k_b[i, j] = torch.exp(-spatial - 0.5 * ((feats[:, i] - feats[:, j]) ** 2).sum())
    q = labels / labels.sum(0)
    energy = labels.log()
    for weight, k in ((crf.gaussian_weight, k_g), (crf.bilateral_weight, k_b)):
        norm = k.sum(1).rsqrt()
        energy = energy + weight * norm * ((norm * q) @ k.T)
    return torch.softmax(energy, 0)[1:].reshape(1, 1, h, w)


@pytest.mark.parametrize("gaussian_sxy", [1.0, (0.7, 1.4)])
def test_one_step_matches_dense_kernel_matrices(gaussian_sxy: float | tuple[float, float]) -> None:
    """MONAI's separable Gaussian filtering and the windowed bilateral messages equal the dense kernel sums."""
    g = torch.Generator().manual_seed(3)
    prob, guide = torch.rand(1, 1, 9, 8, generator=g), torch.rand(1, 3, 9, 8, generator=g) * 255
    bilateral = {"bilateral_sxy": (4.0, 6.0), "bilateral_srgb": 60.0, "window_size": 5, "dilation": 2}
    crf = TorchDenseCRF(gaussian_sxy=gaussian_sxy, num_iterations=1, **bilateral)
    expected = _brute_force_step(prob, guide, crf)
    torch.testing.assert_close(crf(prob.double(), guide.double()), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(crf(prob, guide), expected.float(), atol=1e-5, rtol=0)


def test_batched_matches_single_and_uncached() -> None:
    g = torch.Generator().manual_seed(5)
    prob, guide = torch.rand(2, 1, 40, 44, generator=g), torch.rand(2, 3, 40, 44, generator=g) * 255
    crf = TorchDenseCRF()
    batched = crf(prob, guide)
    assert batched.shape == (2, 1, 40, 44)
    for i in range(2):
        torch.testing.assert_close(batched[i : i + 1], crf(prob[i : i + 1], guide[i : i + 1]))
    # uncached weights (recomputed each iteration) give the same result
    torch.testing.assert_close(TorchDenseCRF(cache_limit=0)(prob, guide), batched)


def test_module_properties() -> None:
    g = torch.Generator().manual_seed(0)
    prob = torch.rand(1, 3, 12, 10, 8, generator=g)
    prob = prob / prob.sum(1, keepdim=True)
    guide = torch.rand(1, 1, 12, 10, 8, generator=g) * 255
    out = TorchDenseCRF()(prob, guide)
    assert out.shape == prob.shape
    torch.testing.assert_close(out.sum(1), torch.ones(1, 12, 10, 8))
    # no iteration: the (clipped) input probabilities come back
    binary = torch.rand(2, 1, 9, 7, generator=g)
    same = TorchDenseCRF(num_iterations=0)(binary, torch.zeros(2, 1, 9, 7))
    torch.testing.assert_close(same, binary.clamp(1e-5, 1 - 1e-5))
    # Gaussian term only (no guide needed): an isolated foreground voxel is removed by the smoothness prior
    speck = torch.full((1, 1, 9, 7), 0.3)
    speck[0, 0, 4, 3] = 0.7
    smooth = TorchDenseCRF(bilateral_weight=0.0)(speck)
    assert smooth.shape == speck.shape and float(smooth.max()) < 0.5
    assert float(TorchDenseCRF(bilateral_weight=0.0, gaussian_weight=0.0)(speck).max()) > 0.5


def test_module_is_differentiable() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 1, 10, 12, generator=g, requires_grad=True)
    guide = torch.rand(1, 3, 10, 12, generator=g) * 255
    out = TorchDenseCRF(num_iterations=2)(torch.sigmoid(logits), guide)
    out.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_validation() -> None:
    crf = TorchDenseCRF()
    with pytest.raises(ValueError, match=r"guide.*\(1, 3, 8, 9\).*prob.*\(1, 1, 8, 10\)"):
        crf(torch.rand(1, 1, 8, 10), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="guide is required"):
        crf(torch.rand(1, 1, 8, 10))
    nan = torch.rand(1, 1, 8, 10)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"prob.*NaN.*\(1, 1, 8, 10\)"):
        crf(nan, torch.rand(1, 1, 8, 10))
    with pytest.raises(ValueError, match=r"prob.*\(8, 10\)"):
        crf(torch.rand(8, 10), torch.rand(8, 10))
    with pytest.raises(ValueError, match=r"gaussian_sxy.*\(3\.0, 3\.0, 3\.0\)"):
        TorchDenseCRF(gaussian_sxy=(3.0, 3.0, 3.0))(torch.rand(1, 1, 8, 10), torch.rand(1, 1, 8, 10))
    for kwargs, name in [
        ({"window_size": 4}, "window_size"),
        ({"dilation": 0}, "dilation"),
        ({"bilateral_sxy": 0.0}, "bilateral_sxy"),
        ({"gaussian_sxy": (3.0, -1.0)}, "gaussian_sxy"),
        ({"bilateral_srgb": 0.0}, "bilateral_srgb"),
        ({"num_iterations": -1}, "num_iterations"),
        ({"eps": 0.5}, "eps"),
    ]:
        with pytest.raises(ValueError, match=f"{name} must"):
            TorchDenseCRF(**kwargs)
