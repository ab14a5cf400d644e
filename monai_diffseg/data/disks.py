# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""A minimal toy segmentation task (noisy bright disks) for fast sanity checks, tests and benchmarks."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["synthetic_disks"]


def synthetic_disks(
    n: int, size: int, rng: np.random.Generator, min_radius_frac: float = 1 / 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ``n`` noisy RGB images ``(n, 3, S, S)`` (float, about ``[0, 1]``) of size ``S = size`` with one bright disk each,
    and their masks ``(n, 1, S, S)`` in ``{0, 1}``, drawn from ``rng``; radii from ``size * min_radius_frac`` to
    ``size / 3.5``.
    """
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for _ in range(n):
        cx, cy = rng.uniform(size / 4, 3 * size / 4, 2)
        r = rng.uniform(size * min_radius_frac, size / 3.5)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(np.float32)
        images.append(np.stack([mask * 0.6 + 0.2 + rng.normal(0, 0.1, mask.shape) for _ in range(3)]))
        labels.append(mask[None])
    return torch.tensor(np.array(images)).float(), torch.tensor(np.array(labels)).float()
