# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.metrics.generalized_energy_distance."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from monai_diffseg.metrics import (
    GED_KEYS,
    GeneralizedEnergyDistanceMetric,
    compute_generalized_energy_distance,
    compute_pairwise_iou,
)


def _masks(rows: list[list[int]], channels: int = 1) -> torch.Tensor:
    """Build a (1, K, C, 1, L) tensor from K members given as flat lists of C * L values."""
    t = torch.tensor(rows, dtype=torch.float32)
    return t.reshape(1, len(rows), channels, 1, -1)


def _f(x: Fraction) -> float:
    return float(x)


# ---------------------------------------------------------------- independent numpy reference (loops over pairs)
def _np_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else inter / union


def _np_ged(samples: np.ndarray, refs: np.ndarray, include_background: bool = True) -> dict[str, np.ndarray]:
    """Per image and per class GED terms; returns arrays of shape (N, C')."""
    samples, refs = samples.astype(bool), refs.astype(bool)
    n, e, c = samples.shape[:3]
    r = refs.shape[1]
    classes = list(range(c)) if (include_background or c == 1) else list(range(1, c))
    out = {k: np.zeros((n, len(classes))) for k in ("cross", "sample_diversity", "reference_diversity")}
    for i in range(n):
        for ci, cls in enumerate(classes):
            cross = [1 - _np_iou(samples[i, a, cls], refs[i, b, cls]) for a in range(e) for b in range(r)]
            ss = [1 - _np_iou(samples[i, a, cls], samples[i, b, cls]) for a in range(e) for b in range(e)]
            yy = [1 - _np_iou(refs[i, a, cls], refs[i, b, cls]) for a in range(r) for b in range(r)]
            out["cross"][i, ci] = np.mean(cross)
            out["sample_diversity"][i, ci] = np.mean(ss)
            out["reference_diversity"][i, ci] = np.mean(yy)
    out["ged"] = 2 * out["cross"] - out["sample_diversity"] - out["reference_diversity"]
    return out


def _random_ensemble(rng: np.random.Generator, shape: tuple[int, ...], p_empty: float = 0.25) -> np.ndarray:
    """Random binary ensemble (N, K, C, spatial...) with per-member densities and some all-empty members."""
    n, k = shape[:2]
    dens = rng.uniform(0.05, 0.7, size=(n, k) + (1,) * (len(shape) - 2))
    x = rng.random(shape) < dens
    x[rng.random((n, k)) < p_empty] = False
    return x


CASES = [
    # (N, E, R, C, spatial, include_background, dtype)
    (2, 3, 4, 1, (5, 6), True, torch.bool),
    (1, 5, 1, 3, (4, 4, 3), False, torch.float32),
    (3, 1, 2, 2, (6, 7), True, torch.int64),
    (2, 4, 4, 2, (3, 4, 5), False, torch.uint8),
    (1, 2, 3, 1, (8,), True, torch.float64),
    (2, 6, 3, 3, (7, 5), True, torch.float16),
]


@pytest.mark.parametrize("n,e,r,c,spatial,include_background,dtype", CASES)
def test_matches_numpy_loop_reference(n, e, r, c, spatial, include_background, dtype):
    rng = np.random.default_rng(hash((n, e, r, c, spatial)) % 2**32)
    s = _random_ensemble(rng, (n, e, c) + spatial)
    y = _random_ensemble(rng, (n, r, c) + spatial)
    if c > 1:  # a class channel that is empty everywhere -> only both-empty pairs for that class
        s[:, :, -1] = False
        y[:, :, -1] = False
    ref = _np_ged(s, y, include_background)
    for red in ("mean", "none"):
        out = compute_generalized_energy_distance(
            torch.from_numpy(s).to(dtype),
            torch.from_numpy(y).to(dtype),
            include_background=include_background,
            reduction_over_classes=red,
        )
        assert set(out) == set(GED_KEYS)
        for k in ("ged", "cross", "sample_diversity", "reference_diversity"):
            expected = ref[k].mean(1) if red == "mean" else ref[k]
            assert out[k].shape == expected.shape, (k, red)
            assert out[k].dtype == torch.float64
            np.testing.assert_allclose(out[k].numpy(), expected, atol=1e-6, err_msg=f"{k} ({red})")
        np.testing.assert_allclose(out["ged_sqrt"].numpy(), np.sqrt(np.clip(out["ged"].numpy(), 0, None)), atol=1e-12)


def test_hand_computed_simple():
    # S1 = [1,1,0,0], S2 = [0,1,1,0]: IoU 1/3 -> d = 2/3; Y1 = S1
    s = _masks([[1, 1, 0, 0], [0, 1, 1, 0]])
    y = _masks([[1, 1, 0, 0]])
    out = compute_generalized_energy_distance(s, y)
    sample_div = Fraction(2 * Fraction(2, 3), 4)  # full 2x2 matrix, zero diagonal
    cross = Fraction(0 + Fraction(2, 3), 2)
    ged = 2 * cross - sample_div - 0
    assert ged == Fraction(1, 3)
    assert out["sample_diversity"].item() == pytest.approx(_f(sample_div), abs=1e-12)
    assert out["cross"].item() == pytest.approx(_f(cross), abs=1e-12)
    assert out["reference_diversity"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["ged"].item() == pytest.approx(_f(ged), abs=1e-12)
    assert out["ged_sqrt"].item() == pytest.approx(_f(ged) ** 0.5, abs=1e-12)
    assert out["ged"].shape == (1,)


def test_hand_computed_with_empty_masks():
    # samples: S1 = S2 = empty, S3 = [1,0,0,0]; references: Y1 = empty, Y2 = [1,1,0,0]
    s = _masks([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    y = _masks([[0, 0, 0, 0], [1, 1, 0, 0]])
    out = compute_generalized_energy_distance(s, y)
    # d(S1,S2) = 0 (both empty), d(S1,S3) = d(S2,S3) = 1 (one empty)
    sample_div = Fraction(2 * (0 + 1 + 1), 9)
    reference_div = Fraction(2 * 1, 4)
    # d(S1,Y1)=0, d(S1,Y2)=1, d(S2,Y1)=0, d(S2,Y2)=1, d(S3,Y1)=1, d(S3,Y2)=1-1/2
    cross = Fraction(0 + 1 + 0 + 1 + 1, 6) + Fraction(1, 12)
    ged = 2 * cross - sample_div - reference_div
    assert (sample_div, reference_div, cross, ged) == (Fraction(4, 9), Fraction(1, 2), Fraction(7, 12), Fraction(2, 9))
    assert out["sample_diversity"].item() == pytest.approx(_f(sample_div), abs=1e-12)
    assert out["reference_diversity"].item() == pytest.approx(_f(reference_div), abs=1e-12)
    assert out["cross"].item() == pytest.approx(_f(cross), abs=1e-12)
    assert out["ged"].item() == pytest.approx(_f(ged), abs=1e-12)


def test_hand_computed_multiclass():
    # C = 2, L = 3. S1: c0=[1,0,0], c1=[0,1,1]; S2: c0=[0,1,1], c1=[0,0,1]; Y1 = S1
    s = _masks([[1, 0, 0, 0, 1, 1], [0, 1, 1, 0, 0, 1]], channels=2)
    y = _masks([[1, 0, 0, 0, 1, 1]], channels=2)
    # class 0: d(S1,S2)=1, d(S2,Y1)=1 -> sample 1/2, cross 1/2, GED_c0 = 1/2
    # class 1: d(S1,S2)=1/2, d(S2,Y1)=1/2 -> sample 1/4, cross 1/4, GED_c1 = 1/4
    per_class = compute_generalized_energy_distance(s, y, reduction_over_classes="none")
    np.testing.assert_allclose(per_class["ged"].numpy(), [[0.5, 0.25]], atol=1e-12)
    np.testing.assert_allclose(per_class["sample_diversity"].numpy(), [[0.5, 0.25]], atol=1e-12)
    np.testing.assert_allclose(per_class["cross"].numpy(), [[0.5, 0.25]], atol=1e-12)
    mean = compute_generalized_energy_distance(s, y)
    assert mean["ged"].item() == pytest.approx(3 / 8, abs=1e-12)
    assert mean["sample_diversity"].item() == pytest.approx(3 / 8, abs=1e-12)
    no_bg = compute_generalized_energy_distance(s, y, include_background=False)
    assert no_bg["ged"].item() == pytest.approx(1 / 4, abs=1e-12)
    assert no_bg["cross"].item() == pytest.approx(1 / 4, abs=1e-12)


def test_identical_samples_and_sample_equals_reference():
    s = _masks([[0, 1, 1, 0]] * 3)
    out = compute_generalized_energy_distance(s, _masks([[0, 1, 1, 0]]))
    for k in GED_KEYS:
        assert out[k].item() == 0.0, k
    # a single sample equal to a single reference: GED 0; a disjoint one: GED = 2 * 1 = 2
    one = _masks([[1, 0, 0, 1]])
    assert compute_generalized_energy_distance(one, one)["ged"].item() == 0.0
    other = _masks([[0, 1, 1, 0]])
    assert compute_generalized_energy_distance(one, other)["ged"].item() == 2.0
    assert compute_generalized_energy_distance(one, other)["ged_sqrt"].item() == pytest.approx(2**0.5)


def test_sample_set_equal_to_reference_set_gives_zero_and_symmetry():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(_random_ensemble(rng, (2, 4, 2, 6, 5)))
    y = torch.from_numpy(_random_ensemble(rng, (2, 3, 2, 6, 5)))
    out = compute_generalized_energy_distance(x, x)
    torch.testing.assert_close(out["ged"], torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out["cross"], out["sample_diversity"])
    a = compute_generalized_energy_distance(x, y)
    b = compute_generalized_energy_distance(y, x)
    torch.testing.assert_close(a["ged"], b["ged"])
    torch.testing.assert_close(a["sample_diversity"], b["reference_diversity"])
    assert bool((a["ged"] >= -1e-12).all())  # 1 - IoU (Jaccard distance) is of negative type -> GED^2 >= 0


def test_pairwise_iou_shape_and_both_empty():
    a = _masks([[0, 0, 0, 0], [1, 1, 0, 0]])
    b = _masks([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    iou = compute_pairwise_iou(a, b)
    assert iou.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(iou[0, 0].numpy(), [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], atol=1e-12)


def test_metric_accumulation_equals_single_call():
    rng = np.random.default_rng(1)
    s = torch.from_numpy(_random_ensemble(rng, (5, 4, 2, 6, 6))).float()
    y = torch.from_numpy(_random_ensemble(rng, (5, 3, 2, 6, 6))).float()
    full = compute_generalized_energy_distance(s, y, include_background=False)

    metric = GeneralizedEnergyDistanceMetric(include_background=False)
    first = metric(y_pred=s[:2], y=y[:2])
    assert isinstance(first, dict) and first["ged"].shape == (2,)
    metric(y_pred=list(s[2:]), y=list(y[2:]))  # list of channel-first (E, C, H, W) tensors
    agg = metric.aggregate()
    per_image = metric.aggregate(reduction="none")
    for k in GED_KEYS:
        assert agg[k].shape == ()
        assert agg[k].item() == pytest.approx(full[k].mean().item(), abs=1e-6), k
        torch.testing.assert_close(per_image[k], full[k])

    single = GeneralizedEnergyDistanceMetric(include_background=False, reduction="none")
    single(y_pred=s, y=y)
    for k in GED_KEYS:
        torch.testing.assert_close(single.aggregate()[k], per_image[k])
    metric.reset()
    with pytest.raises(ValueError, match="before aggregate"):
        metric.aggregate()


def test_metric_per_class_reduction_modes():
    rng = np.random.default_rng(2)
    s = torch.from_numpy(_random_ensemble(rng, (3, 2, 3, 5, 5)))
    y = torch.from_numpy(_random_ensemble(rng, (3, 2, 3, 5, 5)))
    metric = GeneralizedEnergyDistanceMetric(reduction_over_classes="none", reduction="mean_batch")
    metric(s, y)
    per = compute_generalized_energy_distance(s, y, reduction_over_classes="none")
    agg = metric.aggregate()
    assert agg["ged"].shape == (3,)
    torch.testing.assert_close(agg["ged"].double(), per["ged"].mean(0), atol=1e-6, rtol=0)
    assert metric.aggregate("mean")["cross"].item() == pytest.approx(per["cross"].mean().item(), abs=1e-6)


@pytest.mark.parametrize(
    "samples,references,match",
    [
        (torch.zeros(1, 2, 4), torch.zeros(1, 2, 1, 4), "samples must have shape"),
        (torch.zeros(1, 2, 1, 4), torch.zeros(2, 4), "references must have shape"),
        (
            torch.zeros(1, 2, 1, 4, 4),
            torch.zeros(1, 2, 2, 4, 4),
            r"channel count C.*\(1, 2, 1, 4, 4\).*\(1, 2, 2, 4, 4\)",
        ),
        (torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 5), "spatial shape"),
        (torch.zeros(2, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4), "batch size"),
        (torch.zeros(1, 0, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4), "samples must contain at least one"),
        (torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 0, 1, 4, 4), "references must contain at least one"),
        (torch.full((1, 2, 1, 4, 4), 0.5), torch.zeros(1, 2, 1, 4, 4), "samples .* binary.*threshold"),
        (torch.zeros(1, 2, 1, 4, 4), torch.full((1, 2, 1, 4, 4), 2, dtype=torch.long), "references .* binary"),
        (torch.tensor(float("nan")).expand(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4), "samples .* NaN"),
        (np.zeros((1, 2, 1, 4, 4)), torch.zeros(1, 2, 1, 4, 4), "samples must be a torch.Tensor"),
    ],
)
def test_invalid_inputs(samples, references, match):
    with pytest.raises(ValueError, match=match):
        compute_generalized_energy_distance(samples, references)


def test_invalid_options():
    x = torch.zeros(1, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="max"):
        compute_generalized_energy_distance(x, x, reduction_over_classes="max")
    with pytest.raises(ValueError):
        GeneralizedEnergyDistanceMetric(reduction="median")
    with pytest.raises(ValueError, match="y .*required"):
        GeneralizedEnergyDistanceMetric()(y_pred=x)


def test_single_channel_without_background_warns_and_keeps_channel():
    s = _masks([[1, 1, 0, 0], [0, 1, 1, 0]])
    with pytest.warns(UserWarning, match="include_background=False ignored"):
        out = compute_generalized_energy_distance(s, s[:, :1], include_background=False)
    assert out["ged"].item() == pytest.approx(1 / 3)
