# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The MONAI Label app's parts that do not need MONAI Label: the ensemble scores and ranking, the bundle copies."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "apps" / "monailabel" / "lib"


def _load(name: str) -> ModuleType:
    """The app's ``lib/<name>.py`` under a unique module name (``lib`` is the app's own top-level package)."""
    spec = importlib.util.spec_from_file_location(f"monailabel_app_{name}", LIB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


unc = _load("uncertainty")
bundles = _load("bundles")
LOG2 = math.log(2.0)


def test_scores_by_hand() -> None:
    # two members on a 1x2 image: A = [1, 0], B = [1, 1]; the mean is [1, 0.5]
    samples = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])  # (E=2, C=1, H=1, W=2)
    s = unc.ensemble_scores(samples)
    assert s["entropy"] == pytest.approx(LOG2 / 2)  # H(1) = 0, H(0.5) = log 2
    assert s["mutual_information"] == pytest.approx(LOG2 / 2)  # the members are certain: MI = H(mean)
    # IoU(A, B) = 1/2: pairs (A,A) 0, (A,B) 0.5, (B,A) 0.5, (B,B) 0 -> 0.25
    assert s["sample_diversity"] == pytest.approx(0.25)


def test_agreeing_uncertain_members_have_entropy_but_no_disagreement() -> None:
    s = unc.ensemble_scores(torch.full((3, 1, 4, 4), 0.5))
    assert s["entropy"] == pytest.approx(LOG2)
    assert s["mutual_information"] == pytest.approx(0.0, abs=1e-7)
    assert s["sample_diversity"] == pytest.approx(0.0)


def test_scores_need_members() -> None:
    with pytest.raises(ValueError, match="samples"):
        unc.ensemble_scores(torch.rand(1, 8, 8))  # a fused (C, H, W) map


def test_map_is_the_most_uncertain_channel() -> None:
    # channel 0 certain everywhere, channel 1 split 1/0 between the members at pixel (0, 1) only
    samples = torch.zeros(2, 2, 1, 2)
    samples[:, 0] = 1.0
    samples[0, 1, 0, 1] = 1.0
    m = unc.uncertainty_map(samples, "entropy")
    assert m.shape == (1, 1, 2)
    torch.testing.assert_close(torch.as_tensor(m), torch.tensor([[[0.0, LOG2]]]))
    torch.testing.assert_close(torch.as_tensor(unc.uncertainty_map(samples, "mutual_information")), m)
    with pytest.raises(ValueError):
        unc.uncertainty_map(samples, "variance")


def test_map_to_uint8() -> None:
    out = unc.map_to_uint8(torch.tensor([0.0, LOG2 / 2, LOG2, 2.0, -1.0]))
    assert out.dtype == torch.uint8
    assert out.tolist() == [0, 128, 255, 255, 0]


def test_ranking() -> None:
    key = unc.INFO_KEY
    infos = {
        "b": {key: {"m": {"mutual_information": 0.2, "entropy": 0.1}}},
        "a": {key: {"m": {"mutual_information": 0.2, "entropy": 0.3}}},
        "c": {key: {"m": {"mutual_information": 0.5, "entropy": 0.0}}},
        "d": {key: {"other": {"mutual_information": 9.0}}},  # scored by another model only
        "e": {},
    }
    assert unc.rank_by_uncertainty(infos, "m") == [("c", 0.5), ("a", 0.2), ("b", 0.2), ("d", None), ("e", None)]
    assert [i for i, _ in unc.rank_by_uncertainty(infos, "m", "entropy")] == ["a", "b", "c", "d", "e"]
    assert unc.rank_by_uncertainty(infos, "other")[0] == ("d", 9.0)
    with pytest.raises(ValueError):
        unc.rank_by_uncertainty(infos, "m", "variance")


def _bundle(root: Path, name: str, config: str = "{}") -> Path:
    folder = root / name
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "metadata.json").write_text("{}")
    (folder / "configs" / "inference.json").write_text(config)
    (folder / "LICENSE").write_text("license")
    return folder


def test_discover_and_select(tmp_path: Path) -> None:
    for name in ("b_bundle", "a_bundle"):
        _bundle(tmp_path, name)
    (tmp_path / "not_a_bundle").mkdir()
    found = bundles.discover_bundles(tmp_path)
    assert found == ["a_bundle", "b_bundle"]
    assert bundles.select_bundles(found, "all") == found
    assert bundles.select_bundles(found, None) == found
    assert bundles.select_bundles(found, " b_bundle , a_bundle") == ["b_bundle", "a_bundle"]
    with pytest.raises(ValueError, match="a_bundle"):  # the message lists what is available
        bundles.select_bundles(found, "a_bundle,nope")
    with pytest.raises(FileNotFoundError, match="bundles_dir"):
        bundles.discover_bundles(tmp_path / "missing")


def test_prepare_copies_configs_and_keeps_checkpoints(tmp_path: Path) -> None:
    src = _bundle(tmp_path / "bundles", "x", '{"a": 1}')
    model_dir = tmp_path / "app" / "model"
    served = bundles.prepare_bundles(tmp_path / "bundles", model_dir, ["x"])
    dst = Path(served["x"])
    assert dst == model_dir / "x"
    assert json.loads((dst / "configs" / "inference.json").read_text()) == {"a": 1}
    assert (dst / "LICENSE").read_text() == "license" and (dst / "models").is_dir()

    (dst / "models" / "model.pt").write_bytes(b"weights")
    (dst / "configs" / "stale.json").write_text("{}")  # e.g. left by an older version of the bundle
    unchanged = dst / "configs" / "metadata.json"
    os.utime(unchanged, (1, 1))
    (src / "configs" / "inference.json").write_text('{"a": 2}')
    bundles.prepare_bundles(tmp_path / "bundles", model_dir, ["x"])
    assert json.loads((dst / "configs" / "inference.json").read_text()) == {"a": 2}
    assert not (dst / "configs" / "stale.json").exists()
    assert (dst / "models" / "model.pt").read_bytes() == b"weights"
    assert unchanged.stat().st_mtime == 1  # equal files are not rewritten
    assert not [p for p in (dst / "configs").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_overrides(tmp_path: Path) -> None:
    assert bundles.load_overrides(None, ["x"]) == {"x": {"inference": {}, "train": {}}}
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"x": {"inference": {"num_samples": 2}}}))
    assert bundles.load_overrides(path, ["x", "y"]) == {
        "x": {"inference": {"num_samples": 2}, "train": {}},
        "y": {"inference": {}, "train": {}},
    }
    for bad, match in (
        ({"z": {}}, "'z' is not a served bundle"),
        ({"x": {"infer": {}}}, "expected an object with keys"),
        ({"x": {"train": [1]}}, "x.train"),
        ([1], "expected an object of bundle names"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            bundles.load_overrides(path, ["x"])
