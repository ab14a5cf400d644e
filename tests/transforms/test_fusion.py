# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the ensemble fusion array transforms (mean, vote, MedSegDiff squared mean, DiffSeg random subsets);
their dictionary form ``EnsembleFusiond``: test_ensemble_postprocess.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.transforms.fusion import (
    MajorityVoteFusion,
    MeanEnsembleFusion,
    MedSegDiffSquaredMean,
    RandomSubsetFusion,
    check_ensemble_samples,
)

# two members, one channel, 2x2: hand-computed expectations below
S2 = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [0.0, 0.5]]]])
MEAN2 = torch.tensor([[[0.5, 1.0], [0.25, 0.5]]])


def _meta_samples(shape: tuple[int, ...] = (4, 1, 5, 6), seed: int = 0) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    affine = torch.diag(torch.tensor([0.5, 2.0, 1.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.rand(shape, generator=g), affine=affine, meta={"filename_or_obj": "case_001.nii.gz"})


def test_mean_hand_computed() -> None:
    out = MeanEnsembleFusion()(S2)
    assert out.shape == (1, 2, 2)
    torch.testing.assert_close(out.as_tensor(), MEAN2)


def test_mean_accepts_numpy_and_member_sequence() -> None:
    out_np = MeanEnsembleFusion()(S2.numpy())
    torch.testing.assert_close(torch.as_tensor(out_np), MEAN2)
    out_seq = MeanEnsembleFusion()([S2[0], S2[1]])
    torch.testing.assert_close(torch.as_tensor(out_seq), MEAN2)
    members = [MetaTensor(m, affine=torch.eye(4) * (i + 2), meta={"id": i}) for i, m in enumerate(S2)]
    out_meta = MeanEnsembleFusion()(members)  # the first member's metadata
    assert out_meta.meta["id"] == 0 and torch.equal(out_meta.affine, members[0].affine)
    torch.testing.assert_close(torch.as_tensor(MeanEnsembleFusion()([S2[0].numpy(), S2[1]])), MEAN2)  # mixed types


def test_integer_masks_give_float_output() -> None:
    masks = (S2 >= 0.5).to(torch.uint8)
    out = MeanEnsembleFusion()(masks)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[[0.5, 1.0], [0.5, 1.0]]]))


def test_majority_vote_fraction_threshold_inclusive() -> None:
    # 4 members, one pixel each of a 1x3 image: votes 4/4, 2/4 (tie), 1/4; 0.5 counts as foreground
    samples = torch.tensor([[0.9, 0.5, 0.1], [0.6, 0.7, 0.2], [0.7, 0.2, 0.4], [0.8, 0.0, 0.5]]).reshape(4, 1, 1, 3)
    out = MajorityVoteFusion()(samples)
    torch.testing.assert_close(out.as_tensor(), torch.tensor([[[1.0, 0.5, 0.25]]]))
    hard = MajorityVoteFusion(binarize=True)(samples)
    torch.testing.assert_close(hard.as_tensor(), torch.tensor([[[1.0, 1.0, 0.0]]]))  # tie -> foreground
    stricter = MajorityVoteFusion(threshold=0.65)(samples)
    torch.testing.assert_close(stricter.as_tensor(), torch.tensor([[[0.75, 0.25, 0.0]]]))
    assert MajorityVoteFusion()(samples, binarize=True).unique().tolist() == [0.0, 1.0]


def test_squared_mean_matches_medsegdiff_reference_loop() -> None:
    out = MedSegDiffSquaredMean()(S2)
    torch.testing.assert_close(out.as_tensor(), MEAN2**2)
    # re-implementation of the reference "staple": multiply by the mean and average, the loop runs once
    a = _meta_samples((5, 2, 4, 4)).as_tensor()
    mv = a.mean(0, keepdim=True)
    res = torch.cat([s[None] * mv for s in a], 0)
    expected = res.mean(0)
    torch.testing.assert_close(MedSegDiffSquaredMean()(a).as_tensor(), expected)
    assert "NOT STAPLE" in (MedSegDiffSquaredMean.__doc__ or "")


@pytest.mark.parametrize(
    "transform", [MeanEnsembleFusion(), MajorityVoteFusion(), MedSegDiffSquaredMean(), RandomSubsetFusion(2, 2)]
)
@pytest.mark.parametrize("shape", [(4, 1, 5, 6), (3, 2, 4, 5, 6)])
def test_metadata_preserved(transform, shape: tuple[int, ...]) -> None:
    samples = _meta_samples(shape)
    samples.applied_operations = [{"class": "Dummy", "id": 1}]
    out = transform(samples)
    assert isinstance(out, MetaTensor)
    assert out.shape == shape[1:]
    torch.testing.assert_close(out.affine, samples.affine)
    assert out.meta["filename_or_obj"] == "case_001.nii.gz"
    assert out.applied_operations == samples.applied_operations
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_random_subset_full_subset_equals_mean() -> None:
    samples = _meta_samples((5, 1, 4, 4))
    out = RandomSubsetFusion(num_rounds=3, subset_size=5)(samples)
    torch.testing.assert_close(out.as_tensor(), samples.as_tensor().mean(0))


def test_random_subset_hand_checked_with_custom_inner_fusion() -> None:
    samples = torch.arange(6, dtype=torch.float32).div(10).reshape(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    fusion = RandomSubsetFusion(num_rounds=4, subset_size=3, inner_fusion=lambda s: s.max(0).values)
    fusion.set_random_state(seed=3)
    out = fusion(samples)
    assert len(fusion.subsets) == 4
    for subset in fusion.subsets:
        assert len(subset) == 3 and len(set(subset.tolist())) == 3  # without replacement
    expected = np.mean([max(s) / 10 for s in fusion.subsets])
    torch.testing.assert_close(out.as_tensor(), torch.full((1, 2, 2), float(expected)))
    # same seed -> same subsets and result; randomize=False reuses the subsets
    again = RandomSubsetFusion(num_rounds=4, subset_size=3, inner_fusion=lambda s: s.max(0).values)
    again.set_random_state(seed=3)
    torch.testing.assert_close(again(samples), out)
    torch.testing.assert_close(fusion(samples, randomize=False), out)


def test_random_subset_seeds_differ_and_default_size() -> None:
    samples = _meta_samples((8, 1, 3, 3))
    a = RandomSubsetFusion(num_rounds=5).set_random_state(0)
    b = RandomSubsetFusion(num_rounds=5).set_random_state(1)
    a(samples)
    b(samples)
    assert all(len(s) == 4 for s in a.subsets)  # E // 2
    assert any(not np.array_equal(x, y) for x, y in zip(a.subsets, b.subsets))


def test_random_subset_forwards_guide_and_named_inner() -> None:
    samples = _meta_samples((4, 1, 3, 3))
    guide = torch.full((3, 3, 3), 2.0)
    seen = []

    def inner(subset: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        seen.append((tuple(subset.shape), g is guide))
        return subset.mean(0) * 0 + 0.5

    out = RandomSubsetFusion(num_rounds=2, subset_size=2, inner_fusion=inner)(samples, guide=guide)
    assert seen == [((2, 1, 3, 3), True)] * 2
    torch.testing.assert_close(out.as_tensor(), torch.full((1, 3, 3), 0.5))
    vote = RandomSubsetFusion(num_rounds=2, subset_size=4, inner_fusion="vote")(samples)
    torch.testing.assert_close(vote, MajorityVoteFusion()(samples))
    with pytest.raises(ValueError, match="inner_fusion"):
        RandomSubsetFusion(inner_fusion="median")


def test_random_subset_validation() -> None:
    samples = _meta_samples((3, 1, 3, 3))
    with pytest.raises(ValueError, match=r"subset_size.*E=3"):
        RandomSubsetFusion(num_rounds=2, subset_size=4)(samples)
    with pytest.raises(ValueError, match="num_rounds"):
        RandomSubsetFusion(num_rounds=0)
    with pytest.raises(ValueError, match=r"inner_fusion must return.*\(1, 3, 3\)"):
        RandomSubsetFusion(num_rounds=1, subset_size=2, inner_fusion=lambda s: s)(samples)


@pytest.mark.parametrize(
    "transform", [MeanEnsembleFusion(), MajorityVoteFusion(), MedSegDiffSquaredMean(), RandomSubsetFusion(2, 1)]
)
def test_validation_errors_name_argument_and_shape(transform) -> None:
    with pytest.raises(ValueError, match=r"samples.*E >= 1.*\(0, 1, 4, 4\)"):
        transform(torch.zeros(0, 1, 4, 4))
    nan = torch.full((2, 1, 4, 4), 0.5)
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"samples.*NaN.*\(2, 1, 4, 4\)"):
        transform(nan)
    with pytest.raises(ValueError, match=r"samples.*\(E, C, H, W\).*\(1, 4, 4\)"):
        transform(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"samples.*\[0, 1\].*\(2, 1, 4, 4\)"):
        transform(torch.full((2, 1, 4, 4), 3.0))
    with pytest.raises(ValueError, match="empty sequence"):
        transform([])


def test_check_ensemble_samples_returns_plain_float_tensor() -> None:
    img, data = check_ensemble_samples(_meta_samples())
    assert isinstance(img, MetaTensor) and not isinstance(data, MetaTensor)
    assert data.dtype == torch.float32
