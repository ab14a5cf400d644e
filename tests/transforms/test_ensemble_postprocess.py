# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
from __future__ import annotations

import pytest
import torch

from monai_diffseg.transforms import ENSEMBLE_FUSIONS, EnsembleFusiond, EnsembleScoresd


def _samples() -> torch.Tensor:
    s = torch.zeros(3, 1, 8, 8)
    s[:, :, 2:6, 2:6] = 0.9
    s[0, :, 2:6, 6] = 0.9  # one member is wider
    return s


def test_mean_and_vote_by_name() -> None:
    s = _samples()
    mean = EnsembleFusiond("pred", "mean")({"pred": s})["pred"]
    assert mean.shape == (1, 8, 8) and torch.allclose(mean, s.mean(0))
    vote = EnsembleFusiond("pred", "vote", output_keys="fused")({"pred": s})
    assert torch.equal(vote["pred"], s)  # samples kept when writing elsewhere
    assert torch.isclose(vote["fused"][0, 3, 6], torch.tensor(1 / 3))


@pytest.mark.parametrize("method", ENSEMBLE_FUSIONS)
def test_every_method_returns_a_probability_map(method: str) -> None:
    out = EnsembleFusiond("pred", method, guide_key="image")({"pred": _samples(), "image": torch.rand(3, 8, 8)})
    assert out["pred"].shape == (1, 8, 8)
    assert float(out["pred"].min()) >= 0.0 and float(out["pred"].max()) <= 1.0


def test_crf_without_guide_names_the_key() -> None:
    with pytest.raises(ValueError, match="guide"):
        EnsembleFusiond("pred", "torch_crf", guide_key="img")({"pred": _samples()})


def test_unknown_method() -> None:
    with pytest.raises(ValueError):
        EnsembleFusiond("pred", "median")


def test_scores_hand_computed() -> None:
    s = _samples()
    label = torch.zeros(1, 8, 8)
    label[:, 2:6, 2:6] = 1
    d = EnsembleScoresd("pred", "label")({"pred": s, "label": label})
    # members: A (20 px, wider) and B, B (16 px, = label). d(A,B) = 1 - 16/20 = 0.2, ordered pairs incl. i = j
    diversity = (4 * 0.2) / 9
    assert torch.isclose(d["sample_diversity"], torch.tensor(diversity), atol=1e-6)
    cross = 0.2 / 3  # E[d(S, Y)]
    assert torch.isclose(d["ged"], torch.tensor(2 * cross - diversity - 0.0), atol=1e-6)
    assert "ged" not in EnsembleScoresd("pred", "label")({"pred": s})


def test_scores_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="label"):
        EnsembleScoresd("pred", "label")({"pred": _samples(), "label": torch.zeros(1, 4, 4)})
