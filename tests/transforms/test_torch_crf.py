# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the pure PyTorch dense CRF (module and transform), including agreement with pydensecrf."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from monai.data import MetaTensor
from monai.utils import optional_import

from monai_diffseg.networks.blocks.torch_crf import TorchDenseCRF
from monai_diffseg.transforms.dense_crf import DenseCRF, TorchDenseCRFFusion
from monai_diffseg.transforms.ensemble_dict import TorchDenseCRFFusionD, TorchDenseCRFFusiond
from monai_diffseg.transforms.fusion import MeanEnsembleFusion, RandomSubsetFusion

_, has_crf = optional_import("pydensecrf.densecrf")
requires_crf = pytest.mark.skipif(not has_crf, reason="pydensecrf not installed")
# fixtures of conftest.py
pytestmark = pytest.mark.usefixtures("single_thread")

BlobCase = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
Dice = Callable[[object, object], float]


CASES = [
    ((64, 64), True, 0),
    ((64, 64), True, 1),
    ((56, 48), False, 2),
    ((20, 24, 18), False, 3),
    ((20, 24, 18), True, 4),
]


@requires_crf
@pytest.mark.parametrize("shape, rgb, seed", CASES)
def test_agrees_with_pydensecrf(shape: tuple[int, ...], rgb: bool, seed: int, blob_case: BlobCase, dice: Dice) -> None:
    truth, guide, samples = blob_case(shape, seed=seed, rgb=rgb)
    mean = MeanEnsembleFusion()(samples)
    ref = DenseCRF(binarize=True)(mean, guide)
    out = TorchDenseCRFFusion(binarize=True)(mean, guide)
    assert dice(out, ref) > 0.95
    assert dice(out, truth[None]) > 0.95


@pytest.mark.parametrize("shape, rgb, seed", CASES[::2])
def test_improves_over_mean_fusion(
    shape: tuple[int, ...], rgb: bool, seed: int, blob_case: BlobCase, dice: Dice
) -> None:
    truth, guide, samples = blob_case(shape, seed=seed, rgb=rgb)
    mean = MeanEnsembleFusion()(samples)
    out = TorchDenseCRFFusion()(mean, guide)
    d_mean, d_crf = dice(mean, truth[None]), dice(out, truth[None])
    assert d_mean < 0.9
    assert d_crf > d_mean + 0.05


def test_diffseg_random_subsets_refined_by_crf(blob_case: BlobCase, dice: Dice) -> None:
    """DiffSeg's fusion: random subsets, each averaged and refined by the CRF, then averaged."""
    truth, guide, samples = blob_case((40, 48), seed=9, members=6)
    mean, crf = MeanEnsembleFusion(), TorchDenseCRFFusion()
    fusion = RandomSubsetFusion(num_rounds=3, subset_size=3, inner_fusion=lambda s, g: crf(mean(s), g))
    fusion.set_random_state(seed=0)
    out = fusion(samples, guide=guide)
    assert out.shape == (1, 40, 48)
    assert dice(out, truth[None]) > max(0.95, dice(mean(samples), truth[None]) + 0.05)


def test_module_batched_matches_single(blob_case: BlobCase) -> None:
    crf = TorchDenseCRF()
    cases = [blob_case((40, 44), seed=s) for s in (5, 6)]
    prob = torch.stack([MeanEnsembleFusion()(c[2]).as_tensor() for c in cases])  # (2, 1, 40, 44)
    guide = torch.stack([torch.as_tensor(c[1], dtype=torch.float32) for c in cases])  # (2, 3, 40, 44)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(blob_case: BlobCase) -> None:
    _, guide, samples = blob_case((32, 32), seed=7)
    mean = MeanEnsembleFusion()(samples)
    cpu = TorchDenseCRFFusion()(mean, guide)
    gpu = TorchDenseCRFFusion()(mean.cuda(), torch.as_tensor(guide).cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_transform_metadata_and_dict(blob_case: BlobCase) -> None:
    _, guide, samples = blob_case((24, 28), seed=8)
    mean = MeanEnsembleFusion()(MetaTensor(torch.as_tensor(samples), affine=torch.eye(4) * 0.5, meta={"id": 9}))
    out = TorchDenseCRFFusion()(mean, guide)
    assert isinstance(out, MetaTensor) and out.shape == (1, 24, 28)
    torch.testing.assert_close(out.affine, mean.affine)
    assert out.meta["id"] == 9
    t = TorchDenseCRFFusiond("pred", guide_key="img", output_keys="refined", binarize=True)
    d = t({"pred": mean, "img": guide})
    assert set(d["refined"].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(d["refined"], (out >= 0.5).float())
    assert TorchDenseCRFFusionD is TorchDenseCRFFusiond


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
    with pytest.raises(ValueError, match="window_size"):
        TorchDenseCRF(window_size=4)
    with pytest.raises(ValueError, match="dilation"):
        TorchDenseCRF(dilation=0)
    with pytest.raises(ValueError, match="gaussian_sxy"):
        TorchDenseCRF(gaussian_sxy=(3.0, 3.0, 3.0))(torch.rand(1, 1, 8, 10), torch.rand(1, 1, 8, 10))
    transform = TorchDenseCRFFusion()
    with pytest.raises(ValueError, match=r"guide.*\(3, 8, 9\).*\(8, 10\)"):
        transform(torch.rand(1, 8, 10), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match=r"prob.*NaN"):
        transform(nan[0], torch.rand(1, 8, 10))
