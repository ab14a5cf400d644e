# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.metrics.sample_diversity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_diffseg.metrics import SampleDiversityMetric, compute_generalized_energy_distance, compute_sample_diversity


def _np_l2_diversity(samples: np.ndarray, include_background: bool = True) -> np.ndarray:
    """Loop-based reference: mean over all ordered pairs (incl. i = j) of the per-class RMS difference."""
    n, e, c = samples.shape[:3]
    classes = list(range(c)) if (include_background or c == 1) else list(range(1, c))
    out = np.zeros(n)
    for i in range(n):
        vals = []
        for a in range(e):
            for b in range(e):
                per_class = [
                    math.sqrt(np.mean((samples[i, a, k].astype(np.float64) - samples[i, b, k]) ** 2)) for k in classes
                ]
                vals.append(np.mean(per_class))
        out[i] = np.mean(vals)
    return out


def _np_iou_diversity(samples: np.ndarray) -> np.ndarray:
    n, e, c = samples.shape[:3]
    out = np.zeros(n)
    for i in range(n):
        d = []
        for a in range(e):
            for b in range(e):
                for k in range(c):
                    x, y = samples[i, a, k].astype(bool), samples[i, b, k].astype(bool)
                    union = np.logical_or(x, y).sum()
                    d.append(0.0 if union == 0 else 1 - np.logical_and(x, y).sum() / union)
        out[i] = np.mean(d)
    return out


@pytest.mark.parametrize(
    "shape,include_background",
    [((2, 4, 1, 6, 7), True), ((1, 3, 3, 4, 5, 3), False), ((3, 1, 2, 9), True), ((2, 5, 2, 5, 5), True)],
)
def test_l2_matches_numpy_loop_on_soft_masks(shape, include_background):
    rng = np.random.default_rng(len(shape) * 10 + shape[1])
    x = rng.random(shape)
    x[:, 0] = x[:, -1]  # include an identical pair
    out = compute_sample_diversity(torch.from_numpy(x).float(), distance="l2", include_background=include_background)
    assert out.shape == (shape[0],) and out.dtype == torch.float64
    expected = _np_l2_diversity(x.astype(np.float32), include_background)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_l2_hand_computed():
    # S1 = [1,1,0,0], S2 = [0,1,1,0]: 2 of 4 pixels differ -> RMS = sqrt(1/2); 2 of 4 ordered pairs are off-diagonal
    s = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.float32).reshape(1, 2, 1, 1, 4)
    assert compute_sample_diversity(s, "l2").item() == pytest.approx(2 * math.sqrt(0.5) / 4, abs=1e-12)
    # soft: [0.5]*4 vs [0]*4 -> RMS 0.5
    soft = torch.tensor([[0.5] * 4, [0.0] * 4]).reshape(1, 2, 1, 2, 2)
    assert compute_sample_diversity(soft, "l2").item() == pytest.approx(2 * 0.5 / 4, abs=1e-12)


def test_iou_diversity_matches_numpy_and_ged_term():
    rng = np.random.default_rng(3)
    x = rng.random((3, 4, 2, 5, 6)) < rng.uniform(0.1, 0.6, size=(3, 4, 1, 1, 1))
    x[0, :2] = False  # both-empty pairs
    t = torch.from_numpy(x)
    out = compute_sample_diversity(t)
    np.testing.assert_allclose(out.numpy(), _np_iou_diversity(x), atol=1e-6)
    ged = compute_generalized_energy_distance(t, t[:, :1])
    torch.testing.assert_close(out, ged["sample_diversity"])


def test_identical_and_single_samples_give_zero():
    x = torch.rand(2, 1, 1, 8, 8)
    same = x.expand(2, 5, 1, 8, 8)
    assert compute_sample_diversity(same, "l2").abs().max().item() == 0.0
    assert compute_sample_diversity((same > 0.5).float(), "1-iou").abs().max().item() == 0.0
    assert compute_sample_diversity(x, "l2").abs().max().item() == 0.0
    assert compute_sample_diversity(torch.zeros(1, 3, 2, 4, 4, 4)).item() == 0.0  # all empty -> d = 0


def test_metric_accumulation_equals_single_call():
    x = torch.rand(5, 3, 2, 6, 6)
    metric = SampleDiversityMetric(distance="l2", include_background=False)
    out = metric(y_pred=x[:3], y=torch.zeros(3, 1, 2, 6, 6))  # y is ignored
    assert out.shape == (3,)
    metric(y_pred=list(x[3:]))
    full = compute_sample_diversity(x, "l2", include_background=False)
    assert metric.aggregate().item() == pytest.approx(full.mean().item(), abs=1e-6)
    torch.testing.assert_close(metric.aggregate(reduction="none"), full)
    metric.reset()
    with pytest.raises(ValueError, match="before aggregate"):
        metric.aggregate()


@pytest.mark.parametrize(
    "samples,distance,match",
    [
        (torch.full((1, 2, 1, 4, 4), 0.3), "1-iou", "samples .* binary.*threshold"),
        (torch.full((1, 2, 1, 4, 4), 1.5), "l2", r"samples .* \[0, 1\]"),
        (torch.full((1, 2, 1, 4, 4), float("nan")), "l2", "samples .* NaN"),
        (torch.zeros(1, 0, 1, 4, 4), "l2", "samples must contain at least one"),
        (torch.zeros(2, 1, 4), "1-iou", r"samples must have shape.*\(2, 1, 4\)"),
        (torch.zeros(1, 2, 1, 4, 4), "dice", "dice"),
    ],
)
def test_invalid_inputs(samples, distance, match):
    with pytest.raises(ValueError, match=match):
        compute_sample_diversity(samples, distance=distance)
