# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of STAPLE fusion through ITK (the first ITK filter instantiation takes ~15 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.utils import OptionalImportError, optional_import

import monai_diffseg.transforms.staple as staple_module
from monai_diffseg.transforms.ensemble_postprocess import EnsembleFusiond
from monai_diffseg.transforms.fusion import MajorityVoteFusion
from monai_diffseg.transforms.staple import STAPLEFusion

_, has_itk = optional_import("itk")
requires_itk = pytest.mark.skipif(not has_itk, reason="ITK not installed")


def _ellipsoid(shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    # off-centre, anisotropic so that a transposition of axes would be detected
    centre = [0.4 * s for s in shape]
    radii = [0.3 * s * scale for s in shape]
    return (sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0).astype(np.float32)


def _members_with_corrupted_last(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three members (E, 1, *shape): a slightly too small and a slightly too large truth, and a corrupted one."""
    rng = np.random.default_rng(seed)
    truth = _ellipsoid(shape)
    corrupted = truth.copy()
    flip = rng.random(shape) < 0.3  # 30 % of the voxels flipped: low sensitivity and specificity
    corrupted[flip] = 1.0 - corrupted[flip]
    members = [_ellipsoid(shape, 0.95), _ellipsoid(shape, 1.05), corrupted]
    return np.stack(members)[:, None], truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@requires_itk
@pytest.mark.parametrize("shape", [(24, 32), (12, 14, 18)])
def test_staple_downweights_corrupted_member(shape: tuple[int, ...]) -> None:
    members, truth = _members_with_corrupted_last(shape)
    samples = MetaTensor(torch.as_tensor(members), affine=torch.diag(torch.tensor([0.7, 0.8, 0.9, 1.0])), meta={"k": 1})
    out = STAPLEFusion()(samples)
    assert isinstance(out, MetaTensor) and out.shape == (1, *shape)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    sens, spec = out.meta["staple_sensitivity"], out.meta["staple_specificity"]
    assert len(sens) == 1 and len(sens[0]) == 3 and all(isinstance(v, float) for v in sens[0] + spec[0])
    assert int(np.argmin(sens[0])) == 2 and int(np.argmin(spec[0])) == 2
    assert spec[0][2] < 0.8 and min(spec[0][:2]) > 0.95
    majority = MajorityVoteFusion(binarize=True)(members)
    assert _dice(out.numpy(), majority.numpy()) > 0.9
    assert _dice(out.numpy()[0], truth) > 0.9  # also checks that the ITK axis reversal is undone
    torch.testing.assert_close(out.affine, samples.affine)
    assert out.meta["k"] == 1
    assert "staple_sensitivity" not in samples.meta  # input metadata untouched


@requires_itk
def test_staple_multichannel_degenerate_and_dict() -> None:
    members, _ = _members_with_corrupted_last((16, 20), seed=1)
    empty = np.zeros_like(members)
    samples = torch.as_tensor(np.concatenate([members, empty], axis=1))  # (3, 2, 16, 20)
    d = EnsembleFusiond("pred", "staple", output_keys="pred_staple")({"pred": samples})
    out = d["pred_staple"]
    assert out.shape == (2, 16, 20) and not torch.isnan(out).any()
    assert float(out[1].max()) == 0.0  # no foreground in any member -> zero posterior, no NaN from ITK
    assert len(out.meta["staple_sensitivity"]) == 2
    assert all(np.isnan(out.meta["staple_sensitivity"][1]))
    assert out.meta["staple_specificity"][1] == [1.0, 1.0, 1.0]
    single = STAPLEFusion()(samples[:, :1])
    torch.testing.assert_close(out[:1].as_tensor(), single.as_tensor())


@requires_itk
def test_staple_validation() -> None:
    t = STAPLEFusion()
    with pytest.raises(ValueError, match=r"samples.*E >= 1.*\(0, 1, 4, 4\)"):
        t(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match=r"samples.*NaN"):
        t(torch.full((2, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"samples.*\(E, C, H, W\).*\(2, 4, 4\)"):
        t(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="threshold"):
        STAPLEFusion(threshold=2.0)


def test_missing_itk_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_optional_import(module: str, *args, **kwargs):
        return None, False

    monkeypatch.setattr(staple_module, "optional_import", fake_optional_import)
    with pytest.raises(OptionalImportError, match=r'pip install "monai-diffseg\[itk\]"'):
        STAPLEFusion()
    with pytest.raises(ImportError, match="itk"):
        EnsembleFusiond("pred", "staple")
