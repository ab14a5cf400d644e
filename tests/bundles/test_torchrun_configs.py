# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Every 2D bundle's ``multi_gpu_evaluate.json`` and ``multi_gpu_inference.json`` on one gloo process (torchrun's
variables set by hand; the BraTS ones are run by test_brats_bundle.py): the evaluation keeps a record per case and
writes the merged ``metrics.json``; a following inference run with ``skip_existing`` finds every case done, runs none
and still writes all of them, in data-list order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow, single_process_group

from monai_diffseg import data as ddata
from monai_diffseg.handlers import CheckedCheckpointLoader

FAST = {"num_samples": 2, "num_inference_steps": 2, "batch_size": 2}
# bundle -> (synthetic data set, extra overrides)
SETS: dict[str, tuple[Any, dict]] = {
    "medsegdiff_isic2018": (lambda p: ddata.make_synthetic_isic2018(str(p), 2, 0, 3, image_size=(40, 56)), FAST),
    "diffseg_isic2018": (
        lambda p: ddata.make_synthetic_isic2018(str(p), 2, 0, 3, image_size=(40, 56)),
        {"timesteps": [60, 150], "batch_size": 2},
    ),
    "medsegdiff_polyp": (lambda p: ddata.make_synthetic_kvasir_seg(p, num_cases=3, image_size=(32, 40)), FAST),
    "medsegdiff_thyroid_ddti": (lambda p: ddata.make_synthetic_ddti(p, "folders", num_patients=3, crop_size=24), FAST),
    "medsegdiff_fundus_disc_cup": (
        lambda p: ddata.make_synthetic_refuge(p, num_train=1, num_val=1, num_test=3, image_size=(80, 96)),
        {**FAST, "coarse_num_inference_steps": 1},
    ),
    "medsegdiff_multirater": (lambda p: ddata.make_synthetic_case_folders(p, num_cases=3, num_raters=3), FAST),
}


def _random_models(bundle: str, **override) -> None:
    """Every checkpoint the inference loads, with the tiny network's random weights."""
    wf = bundle_workflow(bundle, "inference.json", "infer", **override)
    torch.manual_seed(0)
    for handler in wf.parser.get_parsed_content("handlers"):
        if isinstance(handler, CheckedCheckpointLoader):
            Path(handler.load_path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(handler.load_dict["model"].state_dict(), handler.load_path)


def _run(bundle: str, configs: list[str], monkeypatch: pytest.MonkeyPatch, **override) -> Any:
    with single_process_group(monkeypatch):
        wf = bundle_workflow(bundle, configs, "infer", **override)
        try:
            wf.initialize()
            wf.run()
        finally:
            wf.finalize()
    return wf


@pytest.mark.parametrize("bundle", sorted(SETS))
def test_multi_gpu_evaluate_and_resumed_inference(bundle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make, fast = SETS[bundle]
    common = {"dataset_dir": str(make(tmp_path / "data")), "bundle_root": str(tmp_path), "num_workers": 0}
    common.update({**TINY_NETWORKS[bundle], **fast})
    _random_models(bundle, **common)
    out = tmp_path / "eval"
    wf = _run(
        bundle,
        ["inference.json", "evaluate.json", "multi_gpu_evaluate.json"],
        monkeypatch,
        output_dir=str(out),
        **common,
    )
    cases = [ddata.case_id(item) for item in wf.parser.get_parsed_content("datalist")]
    assert len(cases) >= 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["case"] for c in metrics["cases"]] == cases and metrics["num_cases_run"] == len(cases)
    assert metrics["num_labelled"] == len(cases) and metrics["mean_dice"] is not None
    records = (out / "case_records" / "rank0.jsonl").read_text().splitlines()
    assert [json.loads(r)["case"] for r in records] == cases

    (out / "metrics.json").unlink()
    _run(
        bundle,
        ["inference.json", "multi_gpu_inference.json"],
        monkeypatch,
        output_dir=str(out),
        skip_existing=True,
        **common,
    )
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["num_cases_run"] == 0 and resumed["cases"] == metrics["cases"]
