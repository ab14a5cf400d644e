# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Property tests (hypothesis) of the ensemble fusions on small random ensembles ``(E, C, H, W)``.

Where "the fused map lies within [min, max] of the members, per pixel" holds mathematically:

- ``mean`` (:class:`MeanEnsembleFusion`) and ``random_subset`` with the mean inside (a mean of subset means):
  within ``[min_e p_e, max_e p_e]``;
- ``vote`` (:class:`MajorityVoteFusion`, vote fraction or majority mask): within ``[min, max]`` of the **binarised**
  members ``p_e >= threshold`` (for binary members, of the members themselves; soft members all at 0.6 give a vote
  of 1);
- ``squared_mean`` (:class:`MedSegDiffSquaredMean`): does **not** hold (members all at 0.5 give 0.25); it lies in
  ``[min^2, max^2]`` instead;
- STAPLE and the CRFs: not applicable (STAPLE's posterior is below 1 where all members vote foreground as soon as a
  member's estimated specificity is below 1; a CRF mixes in the neighbours). STAPLE is left out of these properties
  (ITK's first call costs ~15 s here); the torch CRF is checked for batch independence instead.

Also: the vote's majority mask equals ``mean > 0.5`` for binary members and odd ``E`` (``mean >= 0.5`` for any
``E``: ties count as foreground), fusions do not depend on the member order, the torch CRF's value for a case does
not depend on the other cases of its batch, and the uncertainty maps vanish where the members agree.
"""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # the ``test`` extra
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from monai_diffseg.networks.blocks.torch_crf import TorchDenseCRF  # noqa: E402
from monai_diffseg.transforms import (  # noqa: E402
    EnsembleVariance,
    MajorityVoteFusion,
    MeanEnsembleFusion,
    MedSegDiffSquaredMean,
    MutualInformation,
    PredictiveEntropy,
    RandomSubsetFusion,
)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
TOL = 1e-6  # float32 means


@st.composite
def members(draw: st.DrawFn, binary: bool = False, odd: bool = False) -> torch.Tensor:
    """An ensemble ``(E, C, H, W)``: probabilities in [0, 1] (or ``{0, 1}`` when ``binary``)."""
    e = draw(st.sampled_from([1, 3, 5]) if odd else st.integers(1, 6))
    shape = (e, draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if binary:
        return torch.as_tensor(draw(arrays(bool, shape))).float()
    # include the exact values 0, 0.5 and 1 (thresholds, ties) besides any float in [0, 1]
    elements = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0, width=32))
    return torch.as_tensor(draw(arrays("float32", shape, elements=elements)))


def _within(out: torch.Tensor, low: torch.Tensor, high: torch.Tensor, tol: float = TOL) -> bool:
    return bool(((out >= low - tol) & (out <= high + tol)).all())


@SETTINGS
@given(members(), st.integers(0, 2**16))
def test_mean_within_member_range_and_order_free(x: torch.Tensor, seed: int) -> None:
    out = MeanEnsembleFusion()(x)
    assert _within(out, x.min(0).values, x.max(0).values)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(MeanEnsembleFusion()(x[perm]), out, atol=TOL, rtol=0)


@SETTINGS
@given(members(), st.sampled_from([0.0, 0.3, 0.5, 1.0]), st.booleans(), st.integers(0, 2**16))
def test_vote_within_range_of_binarised_members(x: torch.Tensor, threshold: float, hard: bool, seed: int) -> None:
    out = MajorityVoteFusion(threshold=threshold, binarize=hard)(x)
    votes = (x >= threshold).float()
    assert _within(out, votes.min(0).values, votes.max(0).values)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(MajorityVoteFusion(threshold=threshold, binarize=hard)(x[perm]), out, atol=TOL, rtol=0)


@SETTINGS
@given(members(binary=True, odd=True), members(binary=True))
def test_majority_vote_is_mean_above_half(odd: torch.Tensor, anyn: torch.Tensor) -> None:
    assert torch.equal(MajorityVoteFusion(binarize=True)(odd), (odd.mean(0) > 0.5).float())
    assert _within(MajorityVoteFusion()(anyn), anyn.min(0).values, anyn.max(0).values)
    # any E: a tie (half the members) counts as foreground, as documented
    assert torch.equal(MajorityVoteFusion(binarize=True)(anyn), (anyn.mean(0) >= 0.5).float())


@SETTINGS
@given(members())
def test_squared_mean_within_squared_range(x: torch.Tensor) -> None:
    out = MedSegDiffSquaredMean()(x)
    assert torch.allclose(out, x.mean(0) ** 2, atol=TOL, rtol=0)
    assert _within(out, x.min(0).values ** 2, x.max(0).values ** 2)


def test_squared_mean_is_not_within_member_range() -> None:
    """Why [min, max] is not asserted for the squared mean: it leaves the range where the members agree at 0.5."""
    assert torch.allclose(MedSegDiffSquaredMean()(torch.full((3, 1, 2, 2), 0.5)), torch.full((1, 2, 2), 0.25))


@SETTINGS
@given(members(), st.integers(1, 4), st.integers(0, 2**16))
def test_random_subset_mean_within_member_range(x: torch.Tensor, rounds: int, seed: int) -> None:
    fusion = RandomSubsetFusion(num_rounds=rounds, inner_fusion="mean")
    fusion.set_random_state(seed=seed)
    assert _within(fusion(x), x.min(0).values, x.max(0).values)
    vote = RandomSubsetFusion(num_rounds=rounds, inner_fusion="vote")
    vote.set_random_state(seed=seed)
    votes = (x >= 0.5).float()
    assert _within(vote(x), votes.min(0).values, votes.max(0).values)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.integers(2, 3),
    st.integers(3, 6),
    st.integers(3, 6),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_torch_crf_independent_of_batch_composition(n: int, h: int, w: int, cached: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    prob, guide = torch.rand(n, 1, h, w, generator=g), torch.rand(n, 3, h, w, generator=g) * 255
    crf = TorchDenseCRF(bilateral_sxy=3.0, gaussian_sxy=1.0, num_iterations=3, cache_limit=2**25 if cached else 0)
    batch = crf(prob, guide)
    for i in range(n):
        assert torch.allclose(crf(prob[i : i + 1], guide[i : i + 1]), batch[i : i + 1], atol=1e-5, rtol=0)
    # a case placed between other cases (reversed batch) gives the same value
    assert torch.allclose(crf(prob.flip(0), guide.flip(0)).flip(0), batch, atol=1e-5, rtol=0)


@SETTINGS
@given(members(), st.integers(0, 2**16))
def test_uncertainty_maps_order_free_and_zero_where_members_agree(x: torch.Tensor, seed: int) -> None:
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    variance, entropy, mi = EnsembleVariance()(x), PredictiveEntropy()(x), MutualInformation()(x)
    for transform, ref in ((EnsembleVariance(), variance), (PredictiveEntropy(), entropy), (MutualInformation(), mi)):
        assert torch.allclose(transform(x[perm]), ref, atol=1e-5, rtol=0)
    # BALD: 0 <= MI <= H(mean) (Jensen), variance >= 0
    assert float(mi.min()) >= -1e-5 and bool((mi <= entropy + 1e-5).all()) and float(variance.min()) >= 0
    agree = (x == x[:1]).all(0)  # pixels where every member gives the same probability
    assert float(torch.where(agree, mi.abs(), 0.0).max()) < 1e-5
    assert float(torch.where(agree, variance.abs(), 0.0).max()) < 1e-6
