# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Property tests (hypothesis) of the distribution metrics on small random binary ensembles:

- GED, sample diversity (1 - IoU and l2) and Hungarian-matched IoU do not depend on the order of the ensemble
  members nor of the raters;
- GED = 0 and HM-IoU = 1 when the sample set equals the reference set (in any order); GED is symmetric in its two
  sets and non-negative (``1 - IoU`` is of negative type: the Tanimoto similarity, with the empty-empty pair set to
  1, is a positive definite kernel);
- a value computed for one case alone equals the value computed inside a batch with other cases, and the
  cumulative metrics give the same per-image buffer however the cases are split into calls.
"""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")  # the ``test`` extra
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from monai_diffseg.metrics import (  # noqa: E402
    GED_KEYS,
    GeneralizedEnergyDistanceMetric,
    HungarianMatchedIoUMetric,
    SampleDiversityMetric,
    compute_generalized_energy_distance,
    compute_hungarian_matched_iou,
    compute_sample_diversity,
)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
ATOL = 1e-12  # float64 means over permuted pair matrices: only the summation order differs


@st.composite
def ensembles(draw: st.DrawFn, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples (N, E, C, H, W)`` and ``references (N, R, C, H, W)``: binary (or in [0, 1] when ``soft``)."""
    n, e, r = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if soft:
        elements = st.floats(0.0, 1.0, width=32)
        samples = draw(arrays("float32", (n, e, c, h, w), elements=elements))
        references = draw(arrays("float32", (n, r, c, h, w), elements=elements))
    else:
        samples = draw(arrays(bool, (n, e, c, h, w)))
        references = draw(arrays(bool, (n, r, c, h, w)))
    return torch.as_tensor(samples).float(), torch.as_tensor(references).float()


def _permute_members(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Every case gets its own random order of its members (dim 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([xi[torch.randperm(xi.shape[0], generator=g)] for xi in x])


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=ATOL))


@SETTINGS
@given(ensembles(), st.integers(0, 2**16), st.booleans())
def test_ged_invariant_to_member_and_rater_order(sr: tuple, seed: int, per_class: bool) -> None:
    s, r = sr
    reduction = "none" if per_class else "mean"
    ref = compute_generalized_energy_distance(s, r, reduction_over_classes=reduction)
    out = compute_generalized_energy_distance(
        _permute_members(s, seed), _permute_members(r, seed + 1), reduction_over_classes=reduction
    )
    for key in GED_KEYS:
        assert _close(out[key], ref[key]), key


@SETTINGS
@given(ensembles(), st.integers(0, 2**16))
def test_ged_zero_for_identical_sets_symmetric_and_non_negative(sr: tuple, seed: int) -> None:
    s, r = sr
    same = compute_generalized_energy_distance(s, _permute_members(s, seed))
    assert _close(same["ged"], torch.zeros_like(same["ged"]))
    assert float(same["ged_sqrt"].max()) < 1e-6  # sqrt of a rounding residue of at most ~1e-16
    forward, backward = compute_generalized_energy_distance(s, r), compute_generalized_energy_distance(r, s)
    assert _close(forward["ged"], backward["ged"])
    assert float(forward["ged"].min()) >= -ATOL


@SETTINGS
@given(ensembles(), ensembles(soft=True), st.integers(0, 2**16))
def test_sample_diversity_invariant_to_member_order(binary: tuple, soft: tuple, seed: int) -> None:
    s = binary[0]
    assert _close(compute_sample_diversity(_permute_members(s, seed)), compute_sample_diversity(s))
    p = soft[0]
    assert _close(
        compute_sample_diversity(_permute_members(p, seed), distance="l2"), compute_sample_diversity(p, distance="l2")
    )
    # it is the sample term of the GED
    assert _close(compute_sample_diversity(s), compute_generalized_energy_distance(s, s)["sample_diversity"])


@SETTINGS
@given(ensembles(), st.integers(0, 2**16), st.sampled_from(["tile", "rectangular"]))
def test_hungarian_iou_invariant_to_member_and_rater_order(sr: tuple, seed: int, matching: str) -> None:
    s, r = sr
    ref = compute_hungarian_matched_iou(s, r, matching=matching)
    out = compute_hungarian_matched_iou(_permute_members(s, seed), _permute_members(r, seed + 1), matching=matching)
    assert _close(out, ref)
    # a set matched against itself in another order: every pair matched to its twin
    twin = compute_hungarian_matched_iou(s, _permute_members(s, seed), matching=matching)
    assert _close(twin, torch.ones(len(s), dtype=torch.float64))


@SETTINGS
@given(ensembles())
def test_values_independent_of_batch_composition(sr: tuple) -> None:
    """Computing each case alone, or inside a batch with the other cases, gives the same values."""
    s, r = sr
    batch_ged = compute_generalized_energy_distance(s, r)
    batch_hm = compute_hungarian_matched_iou(s, r)
    batch_sd = compute_sample_diversity(s)
    batch_l2 = compute_sample_diversity(s, distance="l2")
    for i in range(len(s)):
        alone = compute_generalized_energy_distance(s[i : i + 1], r[i : i + 1])
        for key in GED_KEYS:
            assert _close(alone[key], batch_ged[key][i : i + 1]), key
        assert _close(compute_hungarian_matched_iou(s[i : i + 1], r[i : i + 1]), batch_hm[i : i + 1])
        assert _close(compute_sample_diversity(s[i : i + 1]), batch_sd[i : i + 1])
        assert _close(compute_sample_diversity(s[i : i + 1], distance="l2"), batch_l2[i : i + 1])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(ensembles(), st.integers(1, 3))
def test_cumulative_metrics_independent_of_how_cases_are_split(sr: tuple, chunk: int) -> None:
    s, r = sr
    metrics = {
        "ged": lambda: GeneralizedEnergyDistanceMetric(reduction="none"),
        "hm": lambda: HungarianMatchedIoUMetric(reduction="none"),
        "sd": lambda: SampleDiversityMetric(reduction="none"),
    }
    for name, make in metrics.items():
        whole, split = make(), make()
        whole(y_pred=s, y=r)
        for start in range(0, len(s), chunk):
            split(y_pred=s[start : start + chunk], y=r[start : start + chunk])
        a, b = whole.aggregate(), split.aggregate()
        if name == "ged":
            assert all(_close(a[k], b[k]) for k in GED_KEYS)
        else:
            assert _close(a, b), name
