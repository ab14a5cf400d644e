# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Shared helpers of monai_diffseg.utils: unwrap_network, the [0, 1] <-> [-1, 1] map, gaussian_blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.ndimage import gaussian_filter

from monai_diffseg.utils import diffusion_to_image, gaussian_blur, image_to_diffusion, unwrap_network


class _HasModuleAttribute(nn.Module):
    """A network with its own submodule called ``module``: not a wrapper, must not be unwrapped."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(2, 2)


def test_unwrap_network_only_unwraps_data_parallel_wrappers() -> None:
    net = nn.Linear(2, 2)
    assert unwrap_network(nn.DataParallel(net)) is net
    own = _HasModuleAttribute()
    assert unwrap_network(own) is own
    assert unwrap_network(torch.relu) is torch.relu  # plain callables pass through


def test_diffusion_range_map() -> None:
    mask = torch.tensor([0.0, 1.0, 0.5])
    assert torch.equal(image_to_diffusion(mask), torch.tensor([-1.0, 1.0, 0.0]))
    assert torch.equal(diffusion_to_image(torch.tensor([-1.0, 1.0, 0.0])), mask)
    x = torch.rand(2, 1, 4, 4) * 255
    assert torch.allclose(diffusion_to_image(image_to_diffusion(x, (0, 255)), (0, 255)), x, atol=1e-4)
    assert image_to_diffusion(torch.tensor([0, 255], dtype=torch.uint8), (0, 255)).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match=r"high > low, got \(1.0, 1.0\)"):
        image_to_diffusion(x, (1.0, 1.0))


@pytest.mark.parametrize("shape,sigma", [((2, 3, 20, 17), 1.0), ((1, 1, 9, 12, 10), 1.5), ((1, 2, 30), 0.7)])
def test_gaussian_blur_equals_scipy(shape: tuple, sigma: float) -> None:
    """Sampled kernel truncated at 3 sigma, reflect padding: scipy's ``gaussian_filter(mode="mirror", truncate=3)``."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    expected = np.stack([[gaussian_filter(c, sigma, mode="mirror", truncate=3.0) for c in b] for b in x.numpy()])
    assert np.allclose(gaussian_blur(x, sigma).numpy(), expected, atol=1e-6)


def test_gaussian_blur_small_image_and_constant() -> None:
    x = torch.full((1, 1, 3, 40), 0.25)
    assert torch.allclose(gaussian_blur(x, 2.0), x)  # radius 6 > 3 rows: replicate padding, a constant stays constant


def test_as_flag_reads_command_line_words() -> None:
    from monai_diffseg.utils import as_flag

    # `--review_report false` reaches the config as the string "false", which bool() takes as on
    assert as_flag("false", "review_report") is False
    assert as_flag("True", "review_report") is True
    assert as_flag(0, "x") is False and as_flag(True, "x") is True
    with pytest.raises(ValueError, match="review_report must be true or false, got 'maybe'"):
        as_flag("maybe", "review_report")
