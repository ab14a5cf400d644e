# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Fixtures shared by the dense CRF tests (``test_dense_crf.py``, ``test_ensemble_postprocess.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

#: the :py:func:`blob_case` fixture: ``(shape, seed, members, rgb, guide_noise) -> (truth, guide, samples)``.
BlobCase = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


def _blob_case(
    shape: tuple[int, ...], seed: int = 0, members: int = 4, rgb: bool = True, guide_noise: float = 15.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy ensemble of an ellipse/ellipsoid, and a guide image showing it in colour + noise.

    Returns:
        truth ``shape``, guide ``(3|1, *shape)`` uint8, members ``(E, 1, *shape)`` in [0, 1].
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    radius = min(shape) / 4
    dist = sum(((g - s / 2) / (radius * (1.3 if i == 0 else 1.0))) ** 2 for i, (g, s) in enumerate(zip(grids, shape)))
    truth = (dist <= 1).astype(np.float32)
    nch = 3 if rgb else 1
    fg = np.array([200, 60, 80][:nch], np.float32).reshape(-1, *[1] * len(shape))
    bg = np.array([90, 150, 170][:nch], np.float32).reshape(-1, *[1] * len(shape))
    guide = truth[None] * fg + (1 - truth[None]) * bg + rng.normal(0, guide_noise, (nch, *shape))
    guide = np.clip(guide, 0, 255).astype(np.uint8)
    noise = np.stack([gaussian_filter(rng.normal(0, 1, shape), 1.5) for _ in range(members)])
    noise = noise / noise.std() * 0.5  # spatially correlated errors, strong enough to corrupt the mean
    samples = np.clip(truth[None] * 0.7 + 0.15 + noise, 0, 1)[:, None].astype(np.float32)
    return truth, guide, samples


def _dice(a: object, b: object) -> float:
    """Dice overlap of ``a > 0.5`` and ``b > 0.5`` (1 when both are empty)."""
    x, y = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Small tensors: avoid OpenMP spin-waiting when the CPU cores are shared with other processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def blob_case() -> BlobCase:
    """The synthetic CRF case generator :py:func:`_blob_case`, deterministic for a given ``seed``."""
    return _blob_case


@pytest.fixture
def dice() -> Callable[[object, object], float]:
    """The Dice overlap :py:func:`_dice` of two (soft) masks binarised at 0.5."""
    return _dice
