# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the ensemble uncertainty maps and their dictionary versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.transforms.ensemble_postprocess import EnsembleUncertaintyD, EnsembleUncertaintyd
from monai_diffseg.transforms.uncertainty import (
    AmbiguousRegion,
    ConsistentRegion,
    EnsembleVariance,
    MutualInformation,
    PredictiveEntropy,
    binary_entropy,
)

LN2 = math.log(2.0)


def _pixels(*members: list[float]) -> torch.Tensor:
    """Members given as lists of pixel values -> samples (E, 1, 1, P)."""
    return torch.tensor(members, dtype=torch.float32)[:, None, None, :]


def _h(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


# pixel columns: (0, 1) disagreeing certain members; (0.5, 0.5) agreeing unsure members; (0.2, 0.4); (1, 1)
SAMPLES = _pixels([0.0, 0.5, 0.2, 1.0], [1.0, 0.5, 0.4, 1.0])


def test_variance_hand_computed() -> None:
    out = EnsembleVariance()(SAMPLES)
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[[0.25, 0.0, 0.01, 0.0]]]))
    unbiased = EnsembleVariance(unbiased=True)(SAMPLES)
    torch.testing.assert_close(unbiased.as_tensor(), torch.tensor([[[0.5, 0.0, 0.02, 0.0]]]))
    single = EnsembleVariance(unbiased=True)(SAMPLES[:1])
    torch.testing.assert_close(single.as_tensor(), torch.zeros(1, 1, 4))


def test_predictive_entropy_hand_computed() -> None:
    out = PredictiveEntropy()(SAMPLES)
    expected = torch.tensor([[[LN2, LN2, _h(0.3), 0.0]]])
    torch.testing.assert_close(out.as_tensor(), expected)
    assert not torch.isnan(out).any()


def test_mutual_information_hand_computed() -> None:
    out = MutualInformation()(SAMPLES)
    # certain but disagreeing members: all entropy is epistemic; agreeing unsure members: none is
    expected = torch.tensor([[[LN2, 0.0, _h(0.3) - 0.5 * (_h(0.2) + _h(0.4)), 0.0]]])
    torch.testing.assert_close(out.as_tensor(), expected)


def test_mutual_information_is_non_negative_and_bounded_by_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(6, 2, 7, 5, 3, generator=g)
    mi = MutualInformation()(samples)
    ent = PredictiveEntropy()(samples)
    assert float(mi.min()) >= 0.0
    assert bool((mi <= ent + 1e-6).all())


def test_multi_class_entropy_and_mi() -> None:
    # two members, 3 classes, one pixel: one-hot on different classes
    samples = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).reshape(2, 3, 1, 1)
    ent = PredictiveEntropy(multi_class=True)(samples)
    assert ent.shape == (1, 1, 1)
    torch.testing.assert_close(ent.as_tensor(), torch.full((1, 1, 1), LN2))
    mi = MutualInformation(multi_class=True)(samples)
    torch.testing.assert_close(mi.as_tensor(), torch.full((1, 1, 1), LN2))
    uniform = torch.full((3, 3, 1, 1), 1.0 / 3.0)
    uniform_ent = PredictiveEntropy(multi_class=True)(uniform)
    torch.testing.assert_close(uniform_ent.as_tensor(), torch.full((1, 1, 1), math.log(3)))
    torch.testing.assert_close(MutualInformation(multi_class=True)(uniform).as_tensor(), torch.zeros(1, 1, 1))


def test_binary_entropy_limits() -> None:
    torch.testing.assert_close(binary_entropy(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, LN2, 0.0]))


def test_consistent_and_ambiguous_regions() -> None:
    samples = _pixels([0.9, 0.5, 0.1, 0.6], [0.8, 0.7, 0.2, 0.4], [0.7, 0.5, 0.0, 0.9])
    torch.testing.assert_close(ConsistentRegion()(samples).as_tensor(), torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]))
    torch.testing.assert_close(AmbiguousRegion()(samples).as_tensor(), torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]))
    torch.testing.assert_close(ConsistentRegion(0.75)(samples).as_tensor(), torch.tensor([[[0.0, 0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(AmbiguousRegion(0.75)(samples).as_tensor(), torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]))
    assert float(AmbiguousRegion()(samples[:1]).max()) == 0.0  # a single member never disagrees


ALL = [EnsembleVariance(), PredictiveEntropy(), MutualInformation(), ConsistentRegion(), AmbiguousRegion()]


@pytest.mark.parametrize("transform", ALL)
@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (3, 1, 4, 5, 2)])
def test_metadata_preserved_and_numpy(transform, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    samples = MetaTensor(
        torch.rand(shape, generator=g), affine=torch.diag(torch.tensor([1.5, 1.5, 3.0, 1.0])), meta={"id": "p7"}
    )
    samples.applied_operations = [{"class": "Dummy", "id": 3}]
    out = transform(samples)
    assert isinstance(out, MetaTensor) and out.shape == shape[1:]
    torch.testing.assert_close(out.affine, samples.affine)
    assert out.meta["id"] == "p7" and out.applied_operations == samples.applied_operations
    out_np = transform(samples.numpy())
    np.testing.assert_allclose(np.asarray(out_np), out.numpy(), atol=1e-6)


@pytest.mark.parametrize("transform", ALL)
def test_validation_errors(transform) -> None:
    with pytest.raises(ValueError, match=r"samples.*E >= 1.*\(0, 2, 3, 3\)"):
        transform(torch.zeros(0, 2, 3, 3))
    nan = torch.zeros(2, 1, 3, 3)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"samples.*NaN.*\(2, 1, 3, 3\)"):
        transform(nan)
    with pytest.raises(ValueError, match=r"samples.*dimensions.*\(2, 1, 3, 3, 3, 3\)"):
        transform(torch.zeros(2, 1, 3, 3, 3, 3))


def test_threshold_validation() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ConsistentRegion(threshold=1.5)
    with pytest.raises(ValueError, match="threshold"):
        AmbiguousRegion(threshold=-0.1)


def test_ensemble_uncertaintyd_several_maps() -> None:
    samples = MetaTensor(SAMPLES.clone(), affine=torch.eye(4) * 2)
    d = EnsembleUncertaintyd(keys="samples")({"samples": samples})
    for name, transform in zip(("variance", "entropy", "mutual_information", "consistent", "ambiguous"), ALL):
        assert isinstance(d[name], MetaTensor)
        torch.testing.assert_close(d[name].as_tensor(), transform(SAMPLES).as_tensor())
        assert torch.equal(d[name].affine, samples.affine)
    d = EnsembleUncertaintyD("samples", maps="entropy", prefix="unc_")({"samples": samples})
    assert "unc_entropy" in d and "unc_variance" not in d
    d = EnsembleUncertaintyd(["a", "b"], maps=("variance", "ambiguous"))({"a": SAMPLES, "b": SAMPLES * 0.5})
    assert set(d) == {"a", "b", "a_variance", "a_ambiguous", "b_variance", "b_ambiguous"}
    torch.testing.assert_close(d["b_variance"].as_tensor(), EnsembleVariance()(SAMPLES * 0.5).as_tensor())
    torch.testing.assert_close(d["a_ambiguous"].as_tensor(), AmbiguousRegion()(SAMPLES).as_tensor())
    d = EnsembleUncertaintyd("s", maps=("entropy", "mutual_information"), multi_class=True, prefix="s_")({"s": SAMPLES})
    torch.testing.assert_close(d["s_entropy"].as_tensor(), PredictiveEntropy(multi_class=True)(SAMPLES).as_tensor())
    assert d["s_mutual_information"].shape == (1, 1, 4)
    d = EnsembleUncertaintyd(["a", "b"], maps="variance", prefix="{key}/")({"a": SAMPLES, "b": SAMPLES})
    assert {"a/variance", "b/variance"} <= set(d)
    with pytest.raises(ValueError, match="maps"):
        EnsembleUncertaintyd("samples", maps=("variance", "stddev"))
    with pytest.raises(ValueError, match=r"prefix.*\{key\}"):
        EnsembleUncertaintyd(["a", "b"], prefix="unc_")
