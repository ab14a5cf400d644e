# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.metrics.hungarian_iou."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from monai_diffseg.metrics import HungarianMatchedIoUMetric, compute_hungarian_matched_iou


def _masks(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(1, len(rows), 1, 1, -1)


def _np_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def _np_hm_iou(samples: np.ndarray, refs: np.ndarray, include_background: bool, matching: str) -> np.ndarray:
    """Brute force over all assignments (tiny ensembles only)."""
    n, e, c = samples.shape[:3]
    r = refs.shape[1]
    classes = list(range(c)) if (include_background or c == 1) else list(range(1, c))
    out = np.zeros(n)
    for i in range(n):
        iou = np.array(
            [[np.mean([_np_iou(samples[i, a, k], refs[i, b, k]) for k in classes]) for b in range(r)] for a in range(e)]
        )
        if matching == "tile":
            k = math.lcm(e, r)
            big = np.array([[iou[a % e, b % r] for b in range(k)] for a in range(k)])
            out[i] = max(np.mean([big[a, p[a]] for a in range(k)]) for p in itertools.permutations(range(k)))
        elif e >= r:  # each reference gets a distinct sample
            out[i] = max(np.mean([iou[p[b], b] for b in range(r)]) for p in itertools.permutations(range(e), r))
        else:
            out[i] = max(np.mean([iou[a, p[a]] for a in range(e)]) for p in itertools.permutations(range(r), e))
    return out


def test_optimal_assignment_is_not_identity():
    # IoU matrix [[0, 2/3], [1/3, 2/3]]: identity gives (0 + 2/3) / 2 = 1/3, the swap gives (2/3 + 1/3) / 2 = 1/2
    s = _masks([[1, 1, 0, 0], [0, 1, 1, 0]])
    y = _masks([[0, 0, 1, 1], [1, 1, 1, 0]])
    out = compute_hungarian_matched_iou(s, y)
    assert out.shape == (1,) and out.dtype == torch.float64
    assert out.item() == pytest.approx(0.5, abs=1e-12)
    assert compute_hungarian_matched_iou(s, y, matching="rectangular").item() == pytest.approx(0.5, abs=1e-12)


def test_tile_versus_rectangular_and_empty_masks():
    # E = 2, R = 1: tiled -> the reference appears twice and both samples are matched: (1 + 0) / 2
    s = _masks([[1, 1, 0, 0], [0, 0, 0, 0]])
    y = _masks([[1, 1, 0, 0]])
    assert compute_hungarian_matched_iou(s, y).item() == pytest.approx(0.5, abs=1e-12)
    assert compute_hungarian_matched_iou(s, y, matching="rectangular").item() == pytest.approx(1.0, abs=1e-12)
    # both empty -> IoU 1; E = 2, R = 3 with lcm 6
    empty = _masks([[0, 0, 0, 0]] * 2)
    assert compute_hungarian_matched_iou(empty, _masks([[0, 0, 0, 0]] * 3)).item() == 1.0
    assert compute_hungarian_matched_iou(empty, _masks([[0, 0, 0, 1]] * 3)).item() == 0.0


@pytest.mark.parametrize(
    "n,e,r,c,spatial,include_background,matching",
    [
        (2, 2, 3, 1, (5, 5), True, "tile"),
        (2, 4, 2, 2, (4, 3, 3), False, "tile"),
        (1, 3, 3, 3, (6, 4), True, "tile"),
        (2, 4, 2, 1, (7,), True, "rectangular"),
        (2, 2, 4, 2, (5, 5), True, "rectangular"),
    ],
)
def test_matches_brute_force(n, e, r, c, spatial, include_background, matching):
    rng = np.random.default_rng(e * 100 + r * 10 + c)
    s = rng.random((n, e, c) + spatial) < rng.uniform(0.1, 0.7, size=(n, e, 1) + (1,) * len(spatial))
    y = rng.random((n, r, c) + spatial) < rng.uniform(0.1, 0.7, size=(n, r, 1) + (1,) * len(spatial))
    s[0, 0] = False  # an all-empty sample
    out = compute_hungarian_matched_iou(
        torch.from_numpy(s), torch.from_numpy(y).float(), include_background=include_background, matching=matching
    )
    expected = _np_hm_iou(s, y, include_background, matching)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_metric_accumulation_equals_single_call():
    rng = np.random.default_rng(5)
    s = torch.from_numpy(rng.random((5, 4, 1, 6, 6)) < 0.4)
    y = torch.from_numpy(rng.random((5, 2, 1, 6, 6)) < 0.4)
    metric = HungarianMatchedIoUMetric()
    assert metric(y_pred=s[:2], y=y[:2]).shape == (2,)
    metric(y_pred=list(s[2:]), y=list(y[2:]))
    full = compute_hungarian_matched_iou(s, y)
    assert metric.aggregate().item() == pytest.approx(full.mean().item(), abs=1e-6)
    torch.testing.assert_close(metric.aggregate("none"), full)
    with pytest.raises(ValueError, match="y .*required"):
        metric(y_pred=s)


@pytest.mark.parametrize(
    "samples,references,match",
    [
        (torch.full((1, 2, 1, 4, 4), 0.7), torch.zeros(1, 2, 1, 4, 4), "samples .* binary.*threshold"),
        (torch.zeros(1, 2, 1, 4, 4), torch.full((1, 2, 1, 4, 4), float("nan")), "references .* NaN"),
        (torch.zeros(1, 2, 2, 4, 4), torch.zeros(1, 2, 1, 4, 4), r"\(1, 2, 2, 4, 4\).*\(1, 2, 1, 4, 4\)"),
        (torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 0, 1, 4, 4), "references must contain at least one"),
        (torch.zeros(1, 2, 4), torch.zeros(1, 2, 1, 4), "samples must have shape"),
    ],
)
def test_invalid_inputs(samples, references, match):
    with pytest.raises(ValueError, match=match):
        compute_hungarian_matched_iou(samples, references)


def test_invalid_matching():
    x = torch.zeros(1, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="greedy"):
        compute_hungarian_matched_iou(x, x, matching="greedy")
