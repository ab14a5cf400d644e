# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""CaseMetricsWriter: per-case scores by metric objects, read from engine metric handlers, failures listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor

from monai_diffseg.handlers import CaseMetricsWriter


def _case(name: str, pred: list[int], label: list[int] | None, samples: list[list[float]]) -> dict:
    item = {
        "image": MetaTensor(torch.zeros(3, 2, 2), meta={"filename_or_obj": f"/data/{name}.jpg"}),
        "pred": torch.tensor(pred, dtype=torch.float32).reshape(1, 2, 2),
        "samples": torch.tensor(samples, dtype=torch.float32).reshape(len(samples), 1, 2, 2),
    }
    if label is not None:
        item["label"] = torch.tensor(label, dtype=torch.float32).reshape(1, 2, 2)
    return item


class _Engine:
    """The parts of an ignite engine the writer uses."""

    def __init__(self, outputs: list[list[dict]], batches: list[list[dict]] | None = None, **state) -> None:
        self.outputs, self.batches = outputs, batches or [[{} for _ in o] for o in outputs]
        self.handlers: dict = {}
        self.data_loader = SimpleNamespace(failed=state.pop("failed", []))
        self.state = SimpleNamespace(output=None, batch=None, metrics={}, metric_details={}, **state)

    def add_event_handler(self, event, fn) -> None:
        self.handlers[event.name] = fn

    def run(self) -> None:
        self.handlers["STARTED"](self)
        for out, batch in zip(self.outputs, self.batches):
            self.state.output, self.state.batch = out, batch
            self.handlers["ITERATION_COMPLETED"](self)
        self.handlers["COMPLETED"](self)


def test_scores_values_and_files(tmp_path: Path) -> None:
    # case a: pred 2 px, label 3 px, overlap 2 -> Dice 4/5, IoU 2/3; members {0,1} and {0,1,2}: diversity 1 - 2/3
    a = _case("a", [1, 1, 0, 0], [1, 1, 1, 0], [[0.9, 0.8, 0.1, 0.0], [0.9, 0.8, 0.7, 0.0]])
    b = _case("b", [0, 0, 0, 0], None, [[0.1, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # unlabelled, both empty
    label_net = {"label_net": a["label"].clone()}
    engine = _Engine([[a, b]], [[label_net, {}]], failed=[{"case": "c", "files": ["/data/c.jpg"], "reason": "x"}])
    writer = CaseMetricsWriter(tmp_path / "m.json", csv_file=tmp_path / "m.csv")
    writer.attach(engine)
    engine.run()
    out = json.loads((tmp_path / "m.json").read_text())
    ca, cb = out["cases"]
    assert ca["case"] == "a" and ca["dice"] == pytest.approx(0.8) and ca["iou"] == pytest.approx(2 / 3)
    # diversity: mean over all ordered pairs incl. i = j of 1 - IoU: (0 + 1/3 + 1/3 + 0) / 4
    assert ca["sample_diversity"] == pytest.approx(1 / 6)
    # GED^2 = 2 E d(S, Y) - E d(S, S') - E d(Y, Y'): d(S1, Y) = 1/3, d(S2, Y) = 0 -> 2 * 1/6 - 1/6 - 0
    assert ca["ged"] == pytest.approx(1 / 6)
    assert cb["dice"] is None and cb["sample_diversity"] == 0.0 and "ged" not in cb
    assert out["num_labelled"] == 1 and out["mean_dice"] == pytest.approx(0.8)
    assert out["num_failed"] == 1 and out["failed"][0]["case"] == "c"
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert (
        [r["case"] for r in rows] == ["a", "b"]
        and rows[1]["dice"] == ""
        and float(rows[0]["iou"]) == pytest.approx(2 / 3)
    )


def test_engine_metric_details_are_read_not_recomputed(tmp_path: Path) -> None:
    a = _case("a", [1, 1, 0, 0], [1, 1, 1, 0], [[1, 1, 0, 0]])
    b = _case("b", [1, 0, 0, 0], [1, 0, 0, 0], [[1, 0, 0, 0]])
    engine = _Engine([[a], [b]])
    engine.state.metric_details = {
        "test_mean_dice": torch.tensor([[0.25], [0.5]]),
        "test_hd95": torch.tensor([[1.0], [float("inf")]]),
    }
    engine.state.metrics = {"test_mean_dice": 0.375}
    writer = CaseMetricsWriter(tmp_path / "m.json", engine_metrics={"dice": "test_mean_dice", "hd95": "test_hd95"})
    writer.attach(engine)
    engine.run()
    out = json.loads((tmp_path / "m.json").read_text())
    assert [c["dice"] for c in out["cases"]] == [0.25, 0.5]  # the handler's values, not a recomputed Dice
    assert out["cases"][1]["hd95"] is None and out["mean_hd95"] == 1.0  # infinite distance is undefined
    assert out["engine_metrics"] == {"test_mean_dice": 0.375}
    assert out["cases"][0]["iou"] == pytest.approx(2 / 3)  # not mapped: computed


def test_missing_engine_details_and_size_mismatch_are_named(tmp_path: Path) -> None:
    engine = _Engine([[_case("a", [1, 1, 0, 0], [1, 1, 1, 0], [[1, 1, 0, 0]])]])
    writer = CaseMetricsWriter(tmp_path / "m.json", engine_metrics={"hd95": "test_hd95"})
    writer.attach(engine)
    with pytest.raises(ValueError, match="test_hd95.*save_details"):
        engine.run()
    bad = _case("z", [1, 1, 0, 0], None, [[1, 1, 0, 0]])
    bad["label"] = torch.zeros(1, 3, 2)
    engine = _Engine([[bad]])
    CaseMetricsWriter(tmp_path / "m.json").attach(engine)
    with pytest.raises(ValueError, match="'z'.*Invertd"):
        engine.run()


def test_channel_names_and_case_scores(tmp_path: Path) -> None:
    # two channels: channel 0 perfect, channel 1 pred 1 px of a 2 px label -> Dice 2/3
    item = {
        "image": MetaTensor(torch.zeros(3, 2, 2), meta={"filename_or_obj": "/data/f.png"}),
        "pred": torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.float32),
        "label": torch.tensor([[[1, 1], [0, 0]], [[1, 1], [0, 0]]], dtype=torch.float32),
        "extra": 3.0,
    }
    engine = _Engine([[item]])
    writer = CaseMetricsWriter(
        tmp_path / "m.json",
        samples_key=None,
        channel_names=["disc", "cup"],
        case_scores=[lambda it: {"extra_x2": it["extra"] * 2, "undefined": None}],
    )
    writer.attach(engine)
    engine.run()
    case = json.loads((tmp_path / "m.json").read_text())["cases"][0]
    assert case["dice_disc"] == pytest.approx(1.0) and case["dice_cup"] == pytest.approx(2 / 3)
    assert case["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert case["extra_x2"] == 6.0 and case["undefined"] is None
    assert case["case"] == "f"  # the file stem without a case id ...
    engine = _Engine([[{**item, "case": "case07"}]])  # ... the data list's id when the item has one
    writer.attach(engine)
    engine.run()
    assert json.loads((tmp_path / "m.json").read_text())["cases"][0]["case"] == "case07"

    bad = CaseMetricsWriter(tmp_path / "b.json", samples_key=None, channel_names=["disc"])
    bad.attach(engine := _Engine([[item]]))
    with pytest.raises(ValueError, match="channel_names"):
        engine.run()
