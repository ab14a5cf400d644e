# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the dense CRF transform with its two backends (pydensecrf, torch) and of the guide scaling."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.utils import OptionalImportError, optional_import

import monai_diffseg.transforms.dense_crf as dense_crf_module
from monai_diffseg.transforms.dense_crf import DenseCRF, scale_guide
from monai_diffseg.transforms.fusion import MeanEnsembleFusion

_, has_crf = optional_import("pydensecrf.densecrf")
requires_crf = pytest.mark.skipif(not has_crf, reason="pydensecrf not installed")
BACKENDS = [pytest.param("pydensecrf", marks=requires_crf), "torch"]
# fixtures of conftest.py
pytestmark = pytest.mark.usefixtures("single_thread")

BlobCase = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
Dice = Callable[[object, object], float]


@requires_crf
@pytest.mark.parametrize("shape, rgb", [((48, 56), True), ((48, 56), False), ((20, 24, 18), False)])
def test_crf_improves_noisy_fusion(shape: tuple[int, ...], rgb: bool, blob_case: BlobCase, dice: Dice) -> None:
    truth, guide, samples = blob_case(shape, rgb=rgb)
    mean = MeanEnsembleFusion()(samples)
    out = DenseCRF()(mean, guide)
    assert out.shape == (1, *shape) and out.dtype == torch.float32
    d_mean, d_crf = dice(mean, truth[None]), dice(out, truth[None])
    assert d_mean < 0.9
    assert d_crf > 0.97 and d_crf > d_mean + 0.05
    hard = DenseCRF(binarize=True)(mean, guide)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard, (out >= 0.5).float())


@requires_crf
@pytest.mark.parametrize(
    "shape, rgb, seed",
    [((64, 64), True, 0), ((64, 64), True, 1), ((56, 48), False, 2), ((20, 24, 18), False, 3), ((20, 24, 18), True, 4)],
)
def test_torch_backend_agrees_with_pydensecrf(
    shape: tuple[int, ...], rgb: bool, seed: int, blob_case: BlobCase, dice: Dice
) -> None:
    truth, guide, samples = blob_case(shape, seed=seed, rgb=rgb)
    mean = MeanEnsembleFusion()(samples)
    ref = DenseCRF(binarize=True)(mean, guide)
    out = DenseCRF(backend="torch", binarize=True)(mean, guide)
    assert dice(out, ref) > 0.95
    assert dice(out, truth[None]) > 0.95


@pytest.mark.parametrize("shape, rgb, seed", [((64, 64), True, 0), ((56, 48), False, 2), ((20, 24, 18), True, 4)])
def test_torch_backend_improves_over_mean_fusion(
    shape: tuple[int, ...], rgb: bool, seed: int, blob_case: BlobCase, dice: Dice
) -> None:
    truth, guide, samples = blob_case(shape, seed=seed, rgb=rgb)
    mean = MeanEnsembleFusion()(samples)
    out = DenseCRF(backend="torch")(mean, guide)
    d_mean, d_crf = dice(mean, truth[None]), dice(out, truth[None])
    assert d_mean < 0.9
    assert d_crf > d_mean + 0.05
    # the transform is the module on a batch of one, with the guide brought to 0..255
    module = DenseCRF(backend="torch").crf
    torch.testing.assert_close(out.as_tensor(), module(mean.as_tensor()[None], torch.as_tensor(guide).float()[None])[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_guide_in_unit_range_matches_uint8(backend: str, blob_case: BlobCase) -> None:
    _, guide, samples = blob_case((32, 40), seed=1)
    mean = MeanEnsembleFusion()(samples)
    a = DenseCRF(backend=backend)(mean, guide)
    b = DenseCRF(backend=backend)(mean, torch.as_tensor(guide, dtype=torch.float32) / 255.0)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multiclass_and_metadata(backend: str, blob_case: BlobCase, dice: Dice) -> None:
    truth, guide, samples = blob_case((32, 36), seed=2)
    fg = MeanEnsembleFusion()(samples)[0]
    probs = torch.stack([(1 - fg) * 0.9, fg * 0.9, torch.full_like(fg, 0.1)])  # 3 classes, sums to one
    prob = MetaTensor(probs, affine=torch.diag(torch.tensor([0.3, 0.4, 1.0, 1.0])), meta={"filename_or_obj": "a.png"})
    out = DenseCRF(backend=backend)(prob, guide)
    assert isinstance(out, MetaTensor) and out.shape == (3, 32, 36)
    torch.testing.assert_close(out.sum(0), torch.ones(32, 36), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.affine, prob.affine)
    assert out.meta["filename_or_obj"] == "a.png"
    assert dice(out[1], truth) > 0.95
    assert float(out[2].max()) < 0.5  # the uninformative class is suppressed
    hard = DenseCRF(backend=backend, binarize=True)(prob, guide)
    torch.testing.assert_close(hard, torch.nn.functional.one_hot(out.argmax(0), 3).permute(2, 0, 1).float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation(backend: str) -> None:
    crf = DenseCRF(backend=backend)
    prob = torch.full((1, 8, 10), 0.5)
    with pytest.raises(ValueError, match=r"guide.*\(3, 8, 9\).*\(8, 10\)"):
        crf(prob, torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match=r"guide.*\(8, 10\)"):
        crf(prob, torch.zeros(8, 10))  # missing channel dimension
    nan = prob.clone()
    nan[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"prob.*NaN.*\(1, 8, 10\)"):
        crf(nan, torch.zeros(1, 8, 10))
    with pytest.raises(ValueError, match=r"prob.*\(1, 8\)"):
        crf(torch.zeros(1, 8), torch.zeros(1, 8))
    with pytest.raises(ValueError, match=r"prob.*\[0, 1\]"):
        crf(prob * 3, torch.zeros(1, 8, 10))
    with pytest.raises(ValueError, match="guide_scaling"):
        DenseCRF(backend=backend, guide_scaling="zscore")
    with pytest.raises(ValueError, match=r"bilateral_sxy.*\(80\.0, 80\.0, 80\.0\)"):
        DenseCRF(backend=backend, bilateral_sxy=(80.0, 80.0, 80.0))(prob, torch.zeros(1, 8, 10))
    with pytest.raises(ValueError, match="bilateral_srgb"):  # one validated parameter set for both backends
        DenseCRF(backend=backend, bilateral_srgb=-1.0)
    with pytest.raises(ValueError, match="eps"):
        DenseCRF(backend=backend, eps=0.0)


def test_backend_options() -> None:
    with pytest.raises(ValueError, match="backend='cuda'"):
        DenseCRF(backend="cuda")
    with pytest.raises(ValueError, match="window_size"):
        DenseCRF(backend="torch", window_size=4)
    if has_crf:
        with pytest.raises(ValueError, match=r"window_size and dilation apply to backend='torch' only"):
            DenseCRF(dilation=2)


def test_scale_guide_modes() -> None:
    g = torch.tensor([[[-100.0, 0.0], [100.0, 300.0]]])
    torch.testing.assert_close(scale_guide(g, (2, 2)), torch.tensor([[[0.0, 64.0], [128.0, 255.0]]]))  # auto: minmax
    torch.testing.assert_close(scale_guide(g, (2, 2), "none"), torch.tensor([[[0.0, 0.0], [100.0, 255.0]]]))
    unit = torch.tensor([[[0.0, 0.5], [0.2, 1.0]]])
    torch.testing.assert_close(scale_guide(unit, (2, 2)), torch.tensor([[[0.0, 128.0], [51.0, 255.0]]]))
    torch.testing.assert_close(scale_guide(unit, (2, 2), "minmax"), torch.tensor([[[0.0, 128.0], [51.0, 255.0]]]))
    u8 = torch.tensor([[[3, 7], [0, 9]]], dtype=torch.uint8)
    torch.testing.assert_close(scale_guide(u8, (2, 2)), u8.float())
    torch.testing.assert_close(scale_guide(torch.ones(1, 2, 2) * 5, (2, 2), "minmax"), torch.zeros(1, 2, 2))


def test_missing_pydensecrf_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_optional_import(module: str, *args, **kwargs):
        return None, False

    monkeypatch.setattr(dense_crf_module, "optional_import", fake_optional_import)
    with pytest.raises(OptionalImportError, match=r'pip install "monai-diffseg\[crf\]", or use backend="torch"'):
        DenseCRF()
    out = DenseCRF(backend="torch")(torch.full((1, 4, 4), 0.7), torch.zeros(1, 4, 4))  # needs no pydensecrf
    assert float(out.min()) > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_torch_backend_cuda_matches_cpu(blob_case: BlobCase) -> None:
    _, guide, samples = blob_case((32, 32), seed=7)
    mean = MeanEnsembleFusion()(samples)
    cpu = DenseCRF(backend="torch")(mean, guide)
    gpu = DenseCRF(backend="torch")(mean.cuda(), torch.as_tensor(guide).cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
