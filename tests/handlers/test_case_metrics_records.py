# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""CaseMetricsWriter with per-case records (sharded/resumable runs) and resume_datalist, in one process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from test_case_metrics import _case, _Engine

from monai_diffseg.data import append_case_records, case_id, read_case_records, resume_datalist, shard_datalist
from monai_diffseg.handlers import CaseMetricsWriter


def _run(writer: CaseMetricsWriter, batches: list[list[dict]], **state) -> None:
    engine = _Engine(batches, **state)
    writer.attach(engine)
    engine.run()


def _writer(tmp_path: Path, **kwargs) -> CaseMetricsWriter:
    return CaseMetricsWriter(
        tmp_path / "metrics.json", csv_file=tmp_path / "metrics.csv", records_dir=tmp_path / "records", **kwargs
    )


A = ([1, 1, 0, 0], [1, 1, 1, 0])  # Dice 4/5
B = ([1, 0, 0, 0], [1, 0, 0, 0])  # Dice 1
C = ([0, 0, 0, 0], [0, 0, 0, 1])  # Dice 0


def test_records_are_kept_per_batch_and_merged_in_data_list_order(tmp_path: Path) -> None:
    order = ["c", "a", "b"]
    datalist = [{"image": f"/data/{c}.jpg", "case": c} for c in order]
    # first run, killed after its first batch: only case a has a record (the writer keeps it at once)
    assert resume_datalist(datalist, tmp_path / "records", skip_existing=False) == datalist
    first = _writer(tmp_path, case_order=order)
    engine = _Engine([[_case("a", *A, [[1, 1, 0, 0]])], [_case("b", *B, [[1, 0, 0, 0]])]])
    first.attach(engine)
    engine.handlers["STARTED"](engine)
    engine.state.output, engine.state.batch = engine.outputs[0], engine.batches[0]
    engine.handlers["ITERATION_COMPLETED"](engine)
    assert list(read_case_records(tmp_path / "records")) == ["a"] and not (tmp_path / "metrics.json").exists()
    # the re-run skips a and scores b and c; the merged file has all three in data-list order
    pending = resume_datalist(datalist, tmp_path / "records", skip_existing=True)
    assert [case_id(i) for i in pending] == ["c", "b"]
    failed = [{"case": "d", "files": ["/data/d.jpg"], "reason": "unreadable"}]
    _run(
        _writer(tmp_path, case_order=order),
        [[_case("c", *C, [[0, 0, 0, 0]]), _case("b", *B, [[1, 0, 0, 0]])]],
        failed=failed,
    )
    out = json.loads((tmp_path / "metrics.json").read_text())
    assert [c["case"] for c in out["cases"]] == order
    assert [c["dice"] for c in out["cases"]] == pytest.approx([0.0, 0.8, 1.0])
    assert out["mean_dice"] == pytest.approx(0.6) and out["num_cases"] == 3 and out["num_cases_run"] == 2
    assert out["failed"] == failed
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["case"] for r in rows] == order
    # a fresh run (skip_existing false; the command line passes the string "false") starts over
    assert resume_datalist(datalist, tmp_path / "records", skip_existing="false") == datalist
    assert read_case_records(tmp_path / "records") == {}


def test_torn_record_line_means_not_done(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    (records / "rank0.jsonl").write_text(json.dumps({"case": "a", "dice": 1.0}) + '\n{"case": "b", "di')
    (records / "rank1.jsonl").write_text(json.dumps({"case": "c", "dice": 0.5}) + "\n")
    assert sorted(read_case_records(records)) == ["a", "c"]
    datalist = [{"image": "/x/a.png"}, {"image": "/x/b.png"}, {"image": ["/x/c_t1.nii.gz"], "case": "c"}]
    assert [case_id(i) for i in resume_datalist(datalist, records, skip_existing=True)] == ["b"]
    # the command line's `--skip_existing true` is the string "true"
    assert [case_id(i) for i in resume_datalist(datalist, records, skip_existing="true")] == ["b"]
    # the resumed run's records start on a new line: only the torn line is lost
    append_case_records(records, [{"case": "b", "dice": 0.25}])
    append_case_records(records, [{"case": "d", "dice": None}])
    assert read_case_records(records)["b"]["dice"] == 0.25 and sorted(read_case_records(records)) == list("abcd")


def test_without_case_order_records_are_sorted_by_name(tmp_path: Path) -> None:
    _run(_writer(tmp_path), [[_case("z", *B, [[1, 0, 0, 0]]), _case("m", *A, [[1, 0, 0, 0]])]])
    assert [c["case"] for c in json.loads((tmp_path / "metrics.json").read_text())["cases"]] == ["m", "z"]


def test_hd95_label_score(tmp_path: Path) -> None:
    # pred {(0,0), (0,1)}, label {(0,0), (0,1), (1,0)}: distances label -> pred 0, 0, 1 and pred -> label 0, 0;
    # the 95th percentile (linear) of 0, 0, 1 is 0.9
    _run(_writer(tmp_path, label_scores=["dice", "hd95"]), [[_case("a", *A, [[1, 1, 0, 0]])]])
    case = json.loads((tmp_path / "metrics.json").read_text())["cases"][0]
    assert case["hd95"] == pytest.approx(0.9) and case["dice"] == pytest.approx(0.8) and "iou" not in case


def test_engine_metrics_with_records_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"engine_metrics .*records_dir.*label_scores"):
        _writer(tmp_path, engine_metrics={"hd95": "test_hd95"})
    with pytest.raises(ValueError, match="hd99"):
        _writer(tmp_path, label_scores=["hd99"])


def test_case_id_needs_a_name() -> None:
    assert case_id({"image": "/d/ISIC_1.jpg"}) == "ISIC_1" and case_id({"case": "q1", "image": "/d/image.png"}) == "q1"
    with pytest.raises(ValueError, match="neither a 'case' string nor an 'image' path"):
        case_id({"image": torch.zeros(1)})


@pytest.mark.parametrize("num_cases, world", [(7, 3), (1, 2), (0, 2), (4, 1)])
def test_shards_cover_every_case_once(num_cases: int, world: int) -> None:
    datalist = [{"case": str(i)} for i in range(num_cases)]
    shards = [shard_datalist(datalist, rank=r, world_size=world) for r in range(world)]
    assert sorted((i["case"] for s in shards for i in s), key=int) == [d["case"] for d in datalist]
    assert shards[0] == datalist[::world]  # MONAI's DistributedSampler(shuffle=False, even_divisible=False) order
    with pytest.raises(ValueError, match="rank 2 is not in"):
        shard_datalist(datalist, rank=2, world_size=2)
