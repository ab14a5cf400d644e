# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The DDTI thyroid bundle through MONAI's ConfigWorkflow on both synthetic layouts: grouped split, short training,
inference at the original sizes with metrics.json (an empty mask scored as Dice 1 when predicted empty), evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow
from PIL import Image

from monai_diffseg.data import make_synthetic_ddti

TINY = TINY_NETWORKS["medsegdiff_thyroid_ddti"]
_workflow = partial(bundle_workflow, "medsegdiff_thyroid_ddti")


@pytest.fixture(scope="module")
def xml_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_ddti(tmp_path_factory.mktemp("ddti_xml"), "xml", num_patients=9, image_size=(30, 40), seed=4)


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_ddti(tmp_path_factory.mktemp("ddti_folders"), "folders", num_patients=5, crop_size=24)


def _patients(items: list[dict]) -> set[str]:
    return {d["case"].split("_")[0] for d in items}


@pytest.mark.parametrize("layout", ["xml", "folder"])
def test_train_workflow_splits_by_patient(layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dataset = request.getfixturevalue(f"{layout}_dataset")
    wf = _workflow("train.json", "train", dataset_dir=dataset, bundle_root=str(tmp_path), val_fraction=0.3, **TINY)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    train, val = wf.train_dataset_data, wf.val_dataset_data
    assert train and val and not _patients(train) & _patients(val)
    if layout == "xml":  # outlines rasterised next to the outputs, not into the data folder
        assert all(Path(d["label"]).parent == tmp_path / "eval" / "ddti_xml_masks" for d in train + val)
        assert not (Path(dataset) / "masks_from_xml").exists()
    first = wf.parser.get_parsed_content("train#dataset")[0]
    assert first["image"].shape == (1, 32, 32) and set(torch.unique(first["label"]).tolist()) <= {0.0, 1.0}


def test_bad_group_regex_is_a_clear_error(folder_dataset: str, tmp_path: Path) -> None:
    wf = _workflow(
        "train.json", "train", dataset_dir=folder_dataset, bundle_root=str(tmp_path), group_regex="^patient", **TINY
    )
    wf.initialize()
    with pytest.raises(Exception) as err:
        _ = wf.train_dataset_data
    text = "".join(str(e) for e in _chain(err.value))
    assert "does not match group_regex '^patient'" in text and "group_regex=None" in text


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_train_infer_evaluate_xml_layout(xml_dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = {"dataset_dir": xml_dataset, "bundle_root": str(out), **TINY}
    train = _workflow(
        "train.json",
        "train",
        num_epochs=2,
        val_interval=1,
        batch_size=4,
        val_num_inference_steps=2,
        val_num_samples=2,
        **common,
    )
    train.initialize()
    train.run()
    train.finalize()
    assert (out / "models" / "model.pt").is_file() and (out / "models" / "checkpoint_last.pt").is_file()
    num_train = len(train.train_dataset_data)
    assert train.trainer.state.iteration == 2 * (num_train // 4)

    pred_dir = tmp_path / "pred"
    infer = _workflow(
        "inference.json", "infer", output_dir=str(pred_dir), num_samples=2, num_inference_steps=2, **common
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    cases = [d["case"] for d in infer.dataset_data]
    assert "9_2" not in cases and len(cases) == 11  # 12 frames, one without outline left out
    for case in cases:
        image = Image.open(Path(xml_dataset) / f"{case}.jpg")
        mask = np.array(Image.open(pred_dir / f"{case}_mask.png"))
        assert mask.shape == image.size[::-1] and set(np.unique(mask)) <= {0, 255}  # original (mixed) sizes
        for kind in ("prob", "overlay", "variance", "entropy"):
            assert (pred_dir / f"{case}_{kind}.png").is_file()
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["num_cases"] == metrics["num_labelled"] == 11
    assert [c["case"] for c in metrics["cases"]] == cases
    assert all(0.0 <= c["dice"] <= 1.0 and c["ged"] is not None for c in metrics["cases"])

    eval_dir = tmp_path / "eval"
    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        output_dir=str(eval_dir),
        num_samples=2,
        num_inference_steps=2,
        **common,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    assert {"test_mean_dice", "test_mean_iou", "test_hd95"} <= set(evaluate.evaluator.state.metrics)
    scores = json.loads((eval_dir / "metrics.json").read_text())
    assert [c["case"] for c in scores["cases"]] == cases and "hd95" in scores["cases"][0]


def test_empty_masks_score_sanely(folder_dataset: str, tmp_path: Path) -> None:
    """An empty reference (the shared DDTI copy has 4) is Dice 1 for an empty prediction, 0 otherwise: never NaN,
    in metrics.json and in the evaluator's Dice (ignore_empty=False)."""
    from monai_diffseg.networks.nets import MedSegDiff

    (tmp_path / "models").mkdir()
    net = MedSegDiff(2, 1, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4)
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        dataset_dir=folder_dataset,
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        num_samples=2,
        num_inference_steps=2,
        **TINY,
    )
    evaluate.initialize()
    evaluate.run()
    scores = json.loads((tmp_path / "o" / "metrics.json").read_text())
    empty = [d["case"] for d in evaluate.dataset_data if not np.asarray(Image.open(d["label"])).any()]
    assert len(empty) == 1
    record = next(c for c in scores["cases"] if c["case"] == empty[0])
    predicted = np.asarray(Image.open(tmp_path / "o" / f"{empty[0]}_mask.png")).any()
    assert record["dice"] == (0.0 if predicted else 1.0) and record["iou"] == record["dice"]
    assert np.isfinite(evaluate.evaluator.state.metrics["test_mean_dice"])
    assert np.isclose(evaluate.evaluator.state.metrics["test_mean_dice"], scores["mean_dice"], atol=1e-5)


@pytest.mark.slow
def test_cli_on_folder_layout(folder_dataset: str, tmp_path: Path) -> None:
    """The command a user types: ``python -m monai.bundle run`` (train 1 epoch, then inference)."""
    configs = ROOT / "bundles" / "medsegdiff_thyroid_ddti" / "configs"
    tiny = [f"--{k} {json.dumps(v).replace(' ', '')}" for k, v in TINY.items()]
    base = (
        f"{sys.executable} -m monai.bundle run --meta_file {configs / 'metadata.json'} --dataset_dir {folder_dataset}"
    )
    base += f" --bundle_root {tmp_path} " + " ".join(tiny)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = f"{base} --config_file {configs / 'train.json'} --num_epochs 1 --batch_size 4 --val_interval 1"
    train += " --val_num_samples 2 --val_num_inference_steps 2"
    subprocess.run(train.split(), check=True, env=env, capture_output=True, timeout=600)
    infer = f"{base} --config_file {configs / 'inference.json'} --num_samples 2 --num_inference_steps 2"
    subprocess.run((infer + f" --output_dir {tmp_path / 'pred'}").split(), check=True, env=env, capture_output=True)
    assert len(list((tmp_path / "pred").glob("*_mask.png"))) == len(list(Path(folder_dataset, "images").glob("*.png")))
