# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The DiffSeg ISIC 2018 bundle through MONAI's ConfigWorkflow: properties, a short two-stage train, inference, evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow
from PIL import Image

from monai_diffseg.data import make_synthetic_isic2018

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "diffseg_isic2018"
CONFIGS = BUNDLE / "configs"

TINY = TINY_NETWORKS["diffseg_isic2018"]


_workflow = partial(bundle_workflow, "diffseg_isic2018")


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("isic_diffseg")
    return make_synthetic_isic2018(str(root), num_train=8, num_val=0, num_test=3, image_size=(40, 56), seed=5)


def test_readme_has_results_table() -> None:
    readme = (BUNDLE / "docs" / "README.md").read_text()
    assert "| method |" in readme and "benchmarks/diffseg_ph2.py" in readme  # the results table and its command


def test_train_reads_no_masks(dataset: str, tmp_path: Path) -> None:
    wf = _workflow("train.json", "train", dataset_dir=dataset, bundle_root=str(tmp_path), **TINY)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    items = wf.parser.get_parsed_content("datalist")
    assert len(items) == 8 and all("label" not in item for item in items)
    healthy = wf.parser.get_parsed_content("healthy#dataset")[0]
    assert set(healthy) >= {"image", "healthy"} and "label" not in healthy
    assert healthy["image"].shape == healthy["healthy"].shape == (3, 32, 32)


def test_unknown_healthy_source_is_a_clear_error(dataset: str, tmp_path: Path) -> None:
    wf = _workflow("train.json", "train", dataset_dir=dataset, bundle_root=str(tmp_path), healthy_source="nope", **TINY)
    with pytest.raises(Exception) as err:
        wf.initialize()
    assert "nope" in "".join(str(e) for e in _chain(err.value))


def test_train_infer_evaluate(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = {"dataset_dir": dataset, "bundle_root": str(out), **TINY}
    train = _workflow("train.json", "train", lesion_num_epochs=2, healthy_num_epochs=1, batch_size=4, **common)
    train.initialize()
    train.run()
    train.finalize()
    models = out / "models"
    for name in ("model_lesion.pt", "model_healthy.pt", "lesion_checkpoint_last.pt", "healthy_checkpoint_last.pt"):
        assert (models / name).is_file(), name
    last = torch.load(models / "lesion_checkpoint_last.pt", weights_only=False)
    assert {"model", "optimizer", "trainer"} <= set(last) and last["trainer"][
        "iteration"
    ] == 2 * 2  # 2 epochs x 2 batches
    lesion = torch.load(models / "model_lesion.pt", weights_only=False)["model"]
    healthy = torch.load(models / "model_healthy.pt", weights_only=False)["model"]
    assert lesion.keys() == healthy.keys()
    assert any(not torch.equal(lesion[k], healthy[k]) for k in lesion)  # the healthy stage trained on

    # resume: a second run with one more lesion epoch continues at epoch 2 and re-runs nothing else
    resume = _workflow("train.json", "train", lesion_num_epochs=3, healthy_num_epochs=1, batch_size=4, **common)
    resume.initialize()
    resume.run()
    trainer = resume.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 3 and trainer.state.iteration == 3 * 2
    assert resume.parser.get_parsed_content("healthy#trainer").state.iteration == 2  # resumed, already complete
    resume.finalize()

    pred_dir = tmp_path / "pred"
    infer = _workflow("inference.json", "infer", output_dir=str(pred_dir), timesteps=[60, 100, 150], **common)
    infer.initialize()
    assert infer.check_properties() in (None, [])
    assert all("label" not in item for item in infer.parser.get_parsed_content("datalist"))  # masks not read
    infer.run()
    infer.finalize()
    cases = sorted(p.stem for p in Path(dataset, "ISIC2018_Task1-2_Test_Input").glob("ISIC_*.jpg"))
    for case in cases:
        for kind in ("mask", "prob", "overlay", "variance", "consistent", "ambiguous"):
            assert (pred_dir / f"{case}_{kind}.png").is_file(), f"{case}_{kind}.png"
        mask = np.array(Image.open(pred_dir / f"{case}_mask.png"))
        assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 255}
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and metrics["num_labelled"] == 0
    assert all(0.0 <= c["sample_diversity"] <= 1.0 for c in metrics["cases"])

    eval_dir = tmp_path / "eval"
    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        output_dir=str(eval_dir),
        timesteps=[60, 100, 150, 140],
        fusion="subset_torch_crf",
        crf_rounds=2,
        crf_subset_size=2,
        **common,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    state = evaluate.evaluator.state
    assert {"test_mean_dice", "test_mean_iou", "test_precision", "test_recall"} <= set(state.metrics)
    result = json.loads((eval_dir / "metrics.json").read_text())
    assert result["num_labelled"] == 3 and result["mean_ged"] is not None
    assert (eval_dir / f"{cases[0]}_consistent.png").is_file()


@pytest.mark.slow
def test_bundle_runs_through_monai_bundle_cli(dataset: str, tmp_path: Path) -> None:
    """``python -m monai.bundle run`` as a user would call it (train then inference)."""
    args = ["--dataset_dir", dataset, "--bundle_root", str(tmp_path), "--image_size", "[32, 32]", "--channels", "[8, 16]",
            "--num_workers", "0"]  # fmt: skip
    base = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", str(CONFIGS / "metadata.json"),
            "--logging_file", str(CONFIGS / "logging.conf")]  # fmt: skip
    subprocess.run(
        [
            *base,
            "--config_file",
            str(CONFIGS / "train.json"),
            *args,
            "--lesion_num_epochs",
            "1",
            "--healthy_num_epochs",
            "1",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [*base, "--config_file", str(CONFIGS / "inference.json"), *args, "--timesteps", "[60, 150]"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert len(list((tmp_path / "eval").glob("*_mask.png"))) == 3
