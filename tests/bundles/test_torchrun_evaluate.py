# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Sharded dataset-scale evaluation: ``inference.json`` + ``evaluate.json`` + ``multi_gpu_evaluate.json`` under
``torchrun`` on the CPU (gloo). Two ranks write the same files and the same merged ``metrics.json`` (data-list order)
as one rank, and a run resumed with ``skip_existing`` after an interruption equals the uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow
from PIL import Image
from torchrun_utils import torchrun_bundle

from monai_diffseg.data import make_synthetic_isic2018

BUNDLE = "medsegdiff_isic2018"
CONFIGS = ["inference.json", "evaluate.json", "multi_gpu_evaluate.json"]
# batches of 2: one rank's batches pair other cases than two ranks' (the samples must not depend on that)
FAST = {**TINY_NETWORKS[BUNDLE], "num_samples": 2, "num_inference_steps": 2, "batch_size": 2}


def _random_model(bundle_root: Path) -> None:
    wf = bundle_workflow(BUNDLE, "inference.json", "infer", bundle_root=str(bundle_root), **TINY_NETWORKS[BUNDLE])
    torch.manual_seed(0)
    network = wf.parser.get_parsed_content("network_def")
    (bundle_root / "models").mkdir(parents=True)
    torch.save(network.state_dict(), bundle_root / "models" / "model.pt")


def _evaluate(dataset: str, root: Path, out: Path, nproc: int, **overrides) -> str:
    config = {**FAST, "output_dir": str(out), **overrides}
    return torchrun_bundle(BUNDLE, CONFIGS, config, root, nproc=nproc, dataset_dir=dataset, bundle_root=str(root))


def _images(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)).astype(np.int16) for p in sorted(out.glob("*.png"))}


def _assert_same_outputs(a: Path, b: Path) -> None:
    ia, ib = _images(a), _images(b)
    assert ia.keys() == ib.keys() and len(ia) > 0
    for name in ia:
        if "_mask" in name:
            assert np.array_equal(ia[name], ib[name]), name
        else:  # 8-bit maps of float results: one grey level of rounding at most
            assert np.abs(ia[name] - ib[name]).max() <= 1, name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert [c["case"] for c in ma["cases"]] == [c["case"] for c in mb["cases"]]
    for ca, cb in zip(ma["cases"], mb["cases"]):
        assert ca.keys() == cb.keys()
        for key in ca:
            if key != "case":
                assert ca[key] == pytest.approx(cb[key], abs=1e-5), (ca["case"], key)
    assert ma["mean_dice"] == pytest.approx(mb["mean_dice"], abs=1e-6)
    assert (a / "metrics.csv").read_text().splitlines()[0] == (b / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_two_ranks_equal_one_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    dataset = make_synthetic_isic2018(
        str(tmp_path / "isic"), num_train=2, num_val=1, num_test=5, image_size=(40, 56), seed=3
    )
    root = tmp_path / "bundle"
    _random_model(root)
    cases = sorted(p.stem for p in Path(dataset, "ISIC2018_Task1-2_Test_Input").glob("ISIC_*.jpg"))

    one, two = tmp_path / "one", tmp_path / "two"
    _evaluate(dataset, root, one, nproc=1)
    _evaluate(dataset, root, two, nproc=2)
    merged = json.loads((two / "metrics.json").read_text())
    assert [c["case"] for c in merged["cases"]] == cases  # every case once, in data-list order
    assert merged["num_cases"] == merged["num_cases_run"] == 5 and merged["num_labelled"] == 5
    assert {"dice", "iou", "hd95", "sample_diversity", "ged"} <= set(merged["cases"][0])
    assert sorted(p.name for p in (two / "case_records").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    assert len((two / "case_records" / "rank1.jsonl").read_text().splitlines()) == 2  # cases 1 and 3 of 5
    _assert_same_outputs(one, two)

    # interrupted while rank 0 wrote its last case's record (torn line): that case alone runs again, on rank 0; rank 1
    # gets no case and only joins the merge
    records = two / "case_records"
    lines = (records / "rank0.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])["case"]
    assert last == cases[-1]
    (records / "rank0.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (two / "metrics.json").unlink()
    for p in two.glob(f"{last}_*.png"):
        p.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in two.glob("*.png")}
    assert len({name.split("_mask")[0] for name in kept if "_mask" in name}) == 4
    _evaluate(dataset, root, two, nproc=2, skip_existing=True)
    resumed = json.loads((two / "metrics.json").read_text())
    assert resumed["num_cases"] == 5 and resumed["num_cases_run"] == 1  # the four finished cases were skipped
    assert all((two / name).stat().st_mtime_ns == t for name, t in kept.items())  # and not written again
    _assert_same_outputs(one, two)
