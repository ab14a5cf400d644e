# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""CaseProgressHandler: cases (not iterations) done/total, elapsed and ETA in the log; a bar on request; off."""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from monai_diffseg.data import SkipFailedDataLoader
from monai_diffseg.handlers import CaseProgressHandler, count_cases, progress

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())
LOGGER = "test_progress"


def _items(n: int) -> list[dict]:
    return [{"image": torch.full((1, 4, 4), float(i))} for i in range(n)]


def _run(loader, caplog: pytest.LogCaptureFixture, **kwargs) -> list[str]:
    engine = Engine(lambda e, batch: batch)
    CaseProgressHandler(name=LOGGER, bar=False, **kwargs).attach(engine)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine.run(loader, max_epochs=1)
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_counts_cases_not_iterations(caplog: pytest.LogCaptureFixture) -> None:
    loader = DataLoader(Dataset(_items(10)), batch_size=4)  # 3 iterations: 4 + 4 + 2 cases
    lines = _run(loader, caplog, every_n_cases=4, interval_s=None, desc="infer")
    assert lines[0] == "infer: 10 cases to run"
    progress = [line for line in lines[1:-1]]
    assert [re.search(r"(\d+)/10 cases", line).group(1) for line in progress] == ["4", "8"]
    for line in progress:
        assert "ETA " in line and "elapsed " in line and "case/s" in line
    assert "40%" in progress[0] and "80%" in progress[1]
    assert re.fullmatch(r"infer: done, 10 cases in \d\d:\d\d \(.* case/s\)", lines[-1])


def test_default_interval_is_a_tenth_of_the_total(caplog: pytest.LogCaptureFixture) -> None:
    loader = DataLoader(Dataset(_items(20)), batch_size=1)
    lines = _run(loader, caplog, interval_s=None)
    counts = [int(m.group(1)) for m in (re.search(r"(\d+)/20 cases", line) for line in lines) if m]
    assert counts == list(range(2, 21, 2))


def test_time_interval(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 25.0)  # every reading of the clock is 25 s later

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return next(clock)

    monkeypatch.setattr(progress, "time", FakeTime)
    loader = DataLoader(Dataset(_items(40)), batch_size=4)
    lines = _run(loader, caplog, every_n_cases=0, interval_s=60.0)
    # start at 0 s, iteration k read at 25 k s: a line once 60 s passed since the previous one (75 s, 150 s, 225 s)
    assert [re.search(r"(\d+)/40 cases", line).group(1) for line in lines[1:-1]] == ["12", "24", "36"]
    assert "elapsed 01:15, ETA 02:55" in lines[1]  # 12 cases in 75 s -> 28 left at the same rate
    assert "done, 40 cases in 04:35" in lines[-1]


def test_decollated_evaluator_output_counts_cases(caplog: pytest.LogCaptureFixture) -> None:
    net = torch.nn.Conv2d(1, 1, 1)
    data = [{"image": torch.rand(1, 4, 4), "label": torch.rand(1, 4, 4)} for _ in range(7)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=3), network=net
    )
    CaseProgressHandler(name=LOGGER, bar=False, every_n_cases=3, interval_s=None, desc="eval").attach(evaluator)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        evaluator.run()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert [re.search(r"(\d+)/7 cases", line).group(1) for line in lines[1:-1]] == ["3", "6"]
    assert "done, 7 cases" in lines[-1]


class _FailOn:
    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def __call__(self, item: dict) -> dict:
        if int(item["image"].flatten()[0]) in self.bad:
            raise OSError("truncated file")
        return item


def test_failed_cases_count_as_done_and_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    loader = SkipFailedDataLoader(Dataset(_items(5), transform=_FailOn({1})), batch_size=2)
    lines = _run(loader, caplog, every_n_cases=1, interval_s=None)
    assert "5 cases to run" in lines[0]
    assert "5/5 cases (100%)" in lines[-2] and "1 failed (skipped)" in lines[-2]
    assert "done, 5 cases" in lines[-1] and "1 failed" in lines[-1]


def test_unknown_total_says_so(caplog: pytest.LogCaptureFixture) -> None:
    lines = _run(iter(_items(2)), caplog, every_n_cases=1, interval_s=None)
    assert "an unknown number of cases" in lines[0]
    assert "2 cases" in lines[2] and "ETA ? (total unknown)" in lines[2]


def test_explicit_total_and_bar(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    engine = Engine(lambda e, batch: batch)
    CaseProgressHandler(name=LOGGER, total=4, bar=True, interval_s=None, desc="bar").attach(engine)
    engine.run(DataLoader(Dataset(_items(4)), batch_size=2), max_epochs=1)
    err = capsys.readouterr().err
    assert "bar: 100%" in err and "4/4" in err


def test_disabled_attaches_nothing(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    lines = _run(DataLoader(Dataset(_items(3))), caplog, enabled=False, every_n_cases=1)
    assert lines == [] and capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs", [{"every_n_cases": -1}, {"every_n_cases": 2.5}, {"interval_s": -1}, {"total": -3}])
def test_bad_arguments_are_named(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CaseProgressHandler(**kwargs)


def test_count_cases() -> None:
    assert count_cases({"image": torch.zeros(5, 1, 2, 2)}) == 5
    assert count_cases({"image": torch.zeros(5, 1, 2, 2)}, [{}, {}]) == 2
    assert count_cases([{}, {}, {}]) == 3
    assert count_cases({"name": "x"}) == 1


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundles_wire_progress_behind_one_option(bundle: str) -> None:
    folder = ROOT / "bundles" / bundle / "configs"
    for files in (["inference.json"], ["inference.json", "evaluate.json"]):
        parser = ConfigParser()
        parser.read_config([str(folder / f) for f in files])
        assert parser["case_progress"] is True, f"{bundle} {files}: 'case_progress' should default to true"
        handlers = [h for h in parser["handlers"] if isinstance(h, dict)]
        wired = [h for h in handlers if h.get("_target_") == "monai_diffseg.handlers.CaseProgressHandler"]
        assert len(wired) == 1 and wired[0]["enabled"] == "@case_progress", f"{bundle} {files}: {handlers}"
    assert json.loads((folder / "inference.json").read_text())["case_progress"] is True
