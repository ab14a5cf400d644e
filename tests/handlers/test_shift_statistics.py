# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.handlers.ShiftStatisticsWriter and spread_subset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from monai_diffseg.handlers import FinalModelSaver, ShiftStatisticsWriter, spread_subset
from monai_diffseg.metrics import ShiftScore, shift_statistics, shift_stats_file
from monai_diffseg.networks.nets import MedSegDiff


def _net(seed: int) -> MedSegDiff:
    torch.manual_seed(seed)
    return MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), num_head_channels=8).eval()


def _data(n: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    images = {f"case{i}": torch.rand(3, 16, 16, generator=g) for i in range(n)}
    return [{"image": k} for k in images], images


def test_spread_subset() -> None:
    items = list(range(10))
    assert (
        spread_subset(items, None) == items and spread_subset(items, 10) == items and spread_subset(items, 20) == items
    )
    assert spread_subset(items, 4) == [0, 3, 6, 9]  # step 3: first and last included
    assert spread_subset(items, 1) == [0]
    with pytest.raises(ValueError, match="max_items"):
        spread_subset(items, 0)


def test_writes_statistics_of_the_saved_model_on_completed(tmp_path: Path) -> None:
    datalist, images = _data(5)
    trained, other = _net(0), _net(1)  # the trainer's network ends with other weights than the saved model
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    writer = ShiftStatisticsWriter(
        other,
        datalist,
        lambda d: {"image": images[d["image"]]},
        model_file=tmp_path / "model.pt",
        max_images=3,
    )
    engine = Engine(lambda e, b: None)
    writer.attach(engine)
    engine.run([0], max_epochs=1)
    path = tmp_path / "shift_stats.pt"
    assert writer.output_file == str(path) == shift_stats_file(tmp_path / "model.pt")
    stats = torch.load(path, weights_only=True)
    chosen = [images[d["image"]] for d in spread_subset(datalist, 3)]  # case0, case2, case4
    expected = shift_statistics(chosen, trained)
    assert stats["num_images"] == 3 and stats["model_file"] == str(tmp_path / "model.pt")
    for part in ("input", "feature"):
        for key in ("mean", "std"):
            assert torch.allclose(stats[part][key], expected[part][key])
    assert not torch.allclose(stats["feature"]["mean"], shift_statistics(chosen, other)["feature"]["mean"])
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # the trainer's network untouched
    # the file is what ShiftScore reads: the chosen training images average (n - 1) / n = 2 / 3
    score = ShiftScore(trained, feature_stats=str(path))
    samples = torch.rand(2, 1, 16, 16)
    dist = [score({"image": x, "samples": samples}) for x in chosen]
    assert math.isclose(sum(d["input_distance"] for d in dist) / 3, 2 / 3, rel_tol=1e-4)
    assert math.isclose(sum(d["feature_distance"] for d in dist) / 3, 2 / 3, rel_tol=1e-4)


def test_after_final_model_saver_and_disabled(tmp_path: Path) -> None:
    datalist, images = _data(3)
    net = _net(0)
    engine = Engine(lambda e, b: None)
    # attached after FinalModelSaver (as in the bundles' train.json): model.pt exists when the writer runs
    FinalModelSaver(tmp_path, {"model": net}).attach(engine)
    ShiftStatisticsWriter(
        net, datalist, lambda d: {"image": images[d["image"]]}, model_file=tmp_path / "model.pt"
    ).attach(engine)
    ShiftStatisticsWriter(
        net, datalist, lambda d: {"image": images[d["image"]]}, output_file=tmp_path / "off.pt", enabled=False
    ).attach(engine)
    engine.run([0], max_epochs=1)
    stats = torch.load(tmp_path / "shift_stats.pt", weights_only=True)
    assert stats["num_images"] == 3 and not (tmp_path / "off.pt").exists()
    assert torch.allclose(stats["feature"]["mean"], shift_statistics(list(images.values()), net)["feature"]["mean"])


def test_errors(tmp_path: Path) -> None:
    datalist, images = _data(1)
    net = _net(0)
    with pytest.raises(ValueError, match="output_file"):
        ShiftStatisticsWriter(net, datalist, lambda d: d)
    with pytest.raises(ValueError, match="at least 2"):
        ShiftStatisticsWriter(net, datalist, lambda d: d, output_file=tmp_path / "s.pt").write()
    datalist, images = _data(2)
    with pytest.raises(ValueError, match="image_key"):
        ShiftStatisticsWriter(
            net, datalist, lambda d: {"img": images[d["image"]]}, output_file=tmp_path / "s.pt"
        ).write()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ShiftStatisticsWriter(
            net, datalist, lambda d: {"image": images[d["image"]]}, model_file=tmp_path / "missing.pt"
        ).write()
    assert not (tmp_path / "s.pt").exists() and not (tmp_path / "shift_stats.pt").exists()
