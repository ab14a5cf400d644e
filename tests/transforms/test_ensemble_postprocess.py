# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests of the dictionary transforms of ensembles: fusion by name (values of every method), reproducible random
subsets across processes, and per-case scores."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, Rotate90d
from monai.utils import optional_import

from monai_diffseg.transforms import (
    ENSEMBLE_FUSIONS,
    DenseCRF,
    EnsembleFusionD,
    EnsembleFusiond,
    EnsembleFusionDict,
    MeanEnsembleFusion,
    RandomSubsetFusion,
    STAPLEFusion,
)

_, has_crf = optional_import("pydensecrf.densecrf")
_, has_itk = optional_import("itk")
# fixtures of conftest.py
pytestmark = pytest.mark.usefixtures("single_thread")


def _samples() -> torch.Tensor:
    s = torch.zeros(3, 1, 8, 8)
    s[:, :, 2:6, 2:6] = 0.9
    s[0, :, 2:6, 6] = 0.9  # one member is wider
    return s


def _by_region(block: float, column: float) -> torch.Tensor:
    """Expected map of :py:func:`_samples`: ``block`` on the 4x4 square all members share, ``column`` on the
    column only member 0 covers, 0 elsewhere."""
    out = torch.zeros(1, 8, 8)
    out[:, 2:6, 2:6] = block
    out[:, 2:6, 6] = column
    return out


HAND_COMPUTED = {
    "mean": _by_region(0.9, 0.3),
    "vote": _by_region(1.0, 1 / 3),
    "squared_mean": _by_region(0.81, 0.09),
    "random_subset": _by_region(0.9, 0.3),  # subsets of all 3 members: every round is the mean
}


@pytest.mark.parametrize("method", sorted(HAND_COMPUTED))
def test_hand_computed_methods(method: str) -> None:
    # one configuration for every method (as in the bundles): the subset sizes are ignored by the other methods
    out = EnsembleFusiond("pred", method, subset_size=3, num_rounds=2)({"pred": _samples()})["pred"]
    torch.testing.assert_close(torch.as_tensor(out), HAND_COMPUTED[method])


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("staple", marks=pytest.mark.skipif(not has_itk, reason="ITK not installed")),
        pytest.param("crf", marks=pytest.mark.skipif(not has_crf, reason="pydensecrf not installed")),
        "torch_crf",
    ],
)
def test_guided_and_itk_methods_equal_their_array_transforms(method: str, blob_case, dice) -> None:
    truth, guide, samples = blob_case((24, 28), seed=3)
    out = EnsembleFusiond("pred", method, guide_key="img")({"pred": samples, "img": guide})["pred"]
    mean = MeanEnsembleFusion()(samples)
    expected = {
        "staple": lambda: STAPLEFusion()(samples),
        "crf": lambda: DenseCRF()(mean, guide),
        "torch_crf": lambda: DenseCRF(backend="torch")(mean, guide),
    }[method]()
    torch.testing.assert_close(out.as_tensor(), expected.as_tensor())
    if method != "staple":  # the CRF really refined the mean
        assert dice(out, truth[None]) > dice(mean, truth[None]) + 0.05


def test_every_method_is_tested() -> None:
    tested = set(HAND_COMPUTED) | {"staple", "crf", "torch_crf", "subset_crf", "subset_torch_crf"}
    assert tested == set(ENSEMBLE_FUSIONS)


def test_output_keys_missing_keys_and_aliases() -> None:
    s = _samples()
    d = EnsembleFusiond(["a", "b"], "vote", output_keys=["fa", "fb"], binarize=True)({"a": s, "b": s * 0.5})
    torch.testing.assert_close(torch.as_tensor(d["fa"]), _by_region(1.0, 0.0))
    torch.testing.assert_close(torch.as_tensor(d["fb"]), torch.zeros(1, 8, 8))  # 0.45 < threshold
    assert torch.equal(d["a"], s)  # samples kept when writing elsewhere
    with pytest.raises(ValueError, match="output_keys"):
        EnsembleFusiond(["a", "b"], output_keys="x")
    d = EnsembleFusiond(["a", "missing"], allow_missing_keys=True)({"a": s})
    assert d["a"].shape == (1, 8, 8)
    assert EnsembleFusionD is EnsembleFusiond and EnsembleFusionDict is EnsembleFusiond


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="guide"):
        EnsembleFusiond("pred", "torch_crf", guide_key="img")({"pred": _samples()})
    with pytest.raises(ValueError, match="method='median'"):
        EnsembleFusiond("pred", "median")
    with pytest.raises(ValueError, match="inner_fusion='subset_crf'"):
        EnsembleFusiond("pred", "random_subset", inner_fusion="subset_crf")
    with pytest.raises(ValueError, match="method='subset_torch_crf'.*'torch_crf'.*inner_fusion"):
        EnsembleFusiond("pred", "subset_torch_crf", inner_fusion="mean")
    with pytest.raises(TypeError, match="callable inner_fusion"):
        EnsembleFusiond("pred", "random_subset", inner_fusion=lambda s: s.mean(0), threshold=0.5)


def test_fused_prediction_can_be_inverted() -> None:
    """A fusion of samples predicted in the preprocessed space is inverted back to the original image space."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(6, 8, generator=g)
    pre = Compose([EnsureChannelFirstd("image", channel_dim="no_channel"), Rotate90d("image")])
    data = pre({"image": MetaTensor(image, affine=torch.eye(4), meta={"filename_or_obj": "x.nii"})})
    rotated = data["image"]
    samples = MetaTensor(torch.stack([rotated.as_tensor()] * 3))
    samples.copy_meta_from(rotated)
    data["pred"] = samples
    data = EnsembleFusiond("pred")(data)
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert inverted.shape == (1, 6, 8)
    torch.testing.assert_close(inverted.as_tensor()[0], image)


def test_random_subset_is_seeded_like_the_array_transform() -> None:
    g = torch.Generator().manual_seed(0)
    samples = MetaTensor(torch.rand(6, 1, 4, 4, generator=g), affine=torch.eye(4) * 2)
    t = EnsembleFusiond("s", "random_subset", num_rounds=3, subset_size=2, inner_fusion="vote", output_keys="f")
    d = t.set_random_state(seed=7)({"s": samples})
    ref = RandomSubsetFusion(num_rounds=3, subset_size=2, inner_fusion="vote").set_random_state(seed=7)
    torch.testing.assert_close(d["f"], ref(samples))
    assert all(np.array_equal(a, b) for a, b in zip(t.fusion.subsets, ref.subsets))
    assert isinstance(d["f"], MetaTensor) and torch.equal(d["f"].affine, samples.affine)
    # a callable inner fusion (no guide), as in RandomSubsetFusion
    d = EnsembleFusiond("s", "random_subset", inner_fusion=lambda s: s.max(0).values, subset_size=6)({"s": samples})
    torch.testing.assert_close(d["s"].as_tensor(), samples.as_tensor().max(0).values)


@pytest.mark.parametrize(
    "method, backend",
    [
        ("subset_torch_crf", "torch"),
        pytest.param("subset_crf", "pydensecrf", marks=pytest.mark.skipif(not has_crf, reason="no pydensecrf")),
    ],
)
def test_subset_crf_is_diffseg_fusion(method: str, backend: str, blob_case, dice) -> None:
    """DiffSeg's fusion: random subsets, each averaged and refined by the CRF, then averaged."""
    truth, guide, samples = blob_case((40, 48), seed=9, members=6)
    t = EnsembleFusiond("pred", method, num_rounds=3, subset_size=3)
    out = t.set_random_state(seed=0)({"pred": samples, "image": guide})["pred"]
    crf, mean = DenseCRF(backend=backend), MeanEnsembleFusion()
    expected = torch.stack([crf(mean(samples[s]), guide).as_tensor() for s in t.fusion.subsets]).mean(0)
    torch.testing.assert_close(out.as_tensor(), expected)
    assert dice(out, truth[None]) > max(0.95, dice(mean(samples), truth[None]) + 0.05)
    inner = EnsembleFusiond("pred", "random_subset", inner_fusion=method[len("subset_") :], num_rounds=3, subset_size=3)
    torch.testing.assert_close(inner.set_random_state(seed=0)({"pred": samples, "image": guide})["pred"], out)


_DRAW = """
import json, torch
from monai.transforms import Compose
from monai.utils import set_determinism
from monai_diffseg.transforms import EnsembleFusiond
samples = torch.arange(8, dtype=torch.float32).div(8).reshape(8, 1, 1, 1).expand(8, 1, 2, 2)
out = {}
for seed in (0, 1):
    set_determinism(seed)
    post = Compose([EnsembleFusiond("pred", "random_subset", num_rounds=6, subset_size=3)])
    fused = post({"pred": samples})["pred"]
    out[seed] = [[s.tolist() for s in post.transforms[0].fusion.subsets], fused.flatten().tolist()]
print(json.dumps(out))
"""


def test_random_subset_reproducible_across_processes() -> None:
    """set_determinism(seed) + Compose (as in the bundles) reach the subsets: two fresh processes draw the same."""
    runs = [
        json.loads(subprocess.run([sys.executable, "-c", _DRAW], capture_output=True, text=True, check=True).stdout)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert runs[0]["0"][0] != runs[0]["1"][0]  # another seed draws other subsets
    subsets, fused = runs[0]["0"]
    assert fused == pytest.approx([np.mean([np.mean(s) / 8 for s in subsets])] * 4)
