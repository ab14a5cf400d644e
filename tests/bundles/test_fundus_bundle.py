# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""medsegdiff_fundus_disc_cup end to end on synthetic REFUGE and Drishti-GS1 layouts with a tiny network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow
from PIL import Image

from monai_diffseg.data import make_synthetic_drishti_gs, make_synthetic_refuge

BUNDLE = "medsegdiff_fundus_disc_cup"
TINY = TINY_NETWORKS[BUNDLE]
FAST_INFERENCE = {"num_inference_steps": 2, "num_samples": 2, "coarse_num_inference_steps": 1}


def _run(config: str | list[str], kind: str, **override) -> None:
    wf = bundle_workflow(BUNDLE, config, kind, **TINY, **override)
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny model trained for 2 epochs on a synthetic REFUGE copy of mixed sizes."""
    data = make_synthetic_refuge(tmp_path_factory.mktemp("refuge"), num_train=6, num_val=2, num_test=3,
                                 image_size=(80, 96), mixed_sizes=True)  # fmt: skip
    bundle_root = str(tmp_path_factory.mktemp("bundle"))
    _run("train.json", "train", bundle_root=bundle_root, dataset_dir=data, num_epochs=2, batch_size=2, val_interval=1)
    return data, bundle_root


def test_train_writes_models(trained: tuple[str, str]) -> None:
    _, bundle_root = trained
    assert {"model.pt", "checkpoint_last.pt"} <= set(os.listdir(os.path.join(bundle_root, "models")))


def test_inference_full_size_masks_and_scores(trained: tuple[str, str]) -> None:
    data, bundle_root = trained
    out = os.path.join(bundle_root, "eval")
    _run("inference.json", "infer", bundle_root=bundle_root, dataset_dir=data, **FAST_INFERENCE)
    metrics = json.loads(Path(out, "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and metrics["num_labelled"] == 3
    case = metrics["cases"][0]
    for key in ("dice_disc", "dice_cup", "vcdr_pred", "vcdr_ref", "vcdr_error", "ged"):
        assert key in case and f"mean_{key}" in metrics
    # ShiftScore without the network (the fine pass's crop is not kept): the network-free scores only
    assert 0.0 <= case["ensemble_dice_error"] <= 1.0 and case["entropy_per_area"] >= 0.0
    assert case["anchor_disagreement"] is None and "input_distance" not in case
    assert case["vcdr_ref"] is not None and 0.3 < case["vcdr_ref"] < 0.9  # the synthetic cups: vCDR 0.35-0.8
    for name in ("T0001", "T0002", "T0003"):
        size = Image.open(os.path.join(data, "Test400", f"{name}.jpg")).size
        disc = np.asarray(Image.open(os.path.join(out, f"{name}_disc_mask.png")))
        cup = np.asarray(Image.open(os.path.join(out, f"{name}_cup_mask.png")))
        assert disc.shape[::-1] == size and cup.shape == disc.shape  # the photograph's own size
        assert set(np.unique(disc)) <= {0, 255} and not np.any((cup > 0) & (disc == 0))  # cup inside disc
        prob_disc = np.asarray(Image.open(os.path.join(out, f"{name}_disc_prob.png"))).astype(int)
        prob_cup = np.asarray(Image.open(os.path.join(out, f"{name}_cup_prob.png"))).astype(int)
        assert np.all(prob_cup <= prob_disc)  # p_cup <= p_disc
        for stem in ("disc_variance", "cup_entropy", "cup_ambiguous", "disc_overlay", "cup_overlay"):
            assert Image.open(os.path.join(out, f"{name}_{stem}.png")).size == size


def test_evaluate(trained: tuple[str, str], tmp_path: Path) -> None:
    data, bundle_root = trained
    _run(["inference.json", "evaluate.json"], "infer", bundle_root=bundle_root, dataset_dir=data,
         output_dir=str(tmp_path), roi=False, keep_largest_component=False, **FAST_INFERENCE)  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test_mean_dice" in metrics["engine_metrics"] and "hd95" in metrics["cases"][0]
    assert "dice_cup" in metrics["cases"][0] and "vcdr_error" in metrics["cases"][0]


def test_drishti_official_layout_without_roi(tmp_path: Path) -> None:
    data = make_synthetic_drishti_gs(tmp_path / "d", num_train=4, num_test=2, image_size=(72, 80))
    bundle_root = str(tmp_path / "b")
    common = {"bundle_root": bundle_root, "dataset_dir": data, "roi": False, "expert_threshold": 3}
    _run("train.json", "train", num_epochs=1, batch_size=2, val_interval=1, val_fraction=0.5, **common)
    _run("inference.json", "infer", **common, **FAST_INFERENCE)
    metrics = json.loads(Path(bundle_root, "eval", "metrics.json").read_text())
    assert [c["case"] for c in metrics["cases"]] == ["drishtiGS_010", "drishtiGS_012"]


def test_cli_inference(trained: tuple[str, str], tmp_path: Path) -> None:
    data, bundle_root = trained
    configs = ROOT / "bundles" / BUNDLE / "configs"
    overrides = {**TINY, **FAST_INFERENCE, "bundle_root": bundle_root, "dataset_dir": data, "output_dir": str(tmp_path)}
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json"),
           "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"), *args]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert json.loads((tmp_path / "metrics.json").read_text())["num_cases"] == 3
