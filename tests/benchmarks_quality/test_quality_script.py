# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Smoke test of benchmarks/quality.py on a tiny synthetic images/ + masks/ folder with a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_diffseg.data import synthetic_lesion_sample

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("quality_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):
        image, mask = synthetic_lesion_sample(rng, (40, 48))
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        # JPEG-like masks: 0..255 with an intermediate value, so the threshold path is exercised
        stored = np.where(mask > 0, 250, 3).astype(np.uint8)
        Image.fromarray(stored).save(root / "masks" / f"case{i:02d}.png")
    return root


def test_quality_report(folder: Path, tmp_path: Path) -> None:
    quality = _load_script()
    torch.manual_seed(0)
    output = tmp_path / "report.json"
    tiny = json.dumps({"channels": [8, 16], "cond_channels": [8, 16], "norm_num_groups": 4})
    report = quality.main([
        "--data", str(folder), "--mask-threshold", "127", "--image-size", "32", "--iterations", "6",
        "--batch-size", "4", "--num-validations", "1", "--network-config", tiny, "--steps", "2", "--members", "3",
        "--baseline-channels", "4", "8", "--baseline-res-units", "0", "--quiet",
        "--work-dir", str(tmp_path / "work"), "--output", str(output),
    ])
    assert output.is_file()
    on_disk = json.loads(output.read_text())
    assert set(on_disk["models"]) == {"medsegdiff", "baseline"}
    split = report["split"]
    assert (split["train"], split["val"], split["test"]) == (10, 1, 3)  # 0.7/0.1/0.2 of 14, largest remainder
    assert report["budget"]["iterations"] == 6  # 10 // 4 = 2 iterations per epoch, 3 epochs
    for name in ("medsegdiff", "baseline"):
        entry = report["models"][name]
        assert entry["train"]["iterations"] == report["budget"]["iterations"]
        assert entry["train"]["train_wall_s"] > 0
        summary = entry["summary"]
        assert summary["num_cases"] == 3 and len(entry["cases"]) == 3
        for key in ("dice", "iou", "ece", "ece_pooled"):
            assert 0.0 <= summary[key] <= 1.0, (name, key, summary[key])
        assert 0.0 <= summary["hd95"] <= math.hypot(40, 48) + 1e-6
        rho = summary["spearman_primary"]
        assert rho is None or -1.0 <= rho <= 1.0
    msd = report["models"]["medsegdiff"]["summary"]
    assert msd["steps"] == 2 and msd["members"] == 3
    assert 0.0 <= msd["diversity"] <= 1.0 and -1e-9 <= msd["ged"] <= 2.0 and 0.0 <= msd["anchor_dice"] <= 1.0
    assert set(msd["uncertainty"]) == set(quality.UNCERTAINTY_SCORES)


def test_epochs_plan_equal_budget() -> None:
    quality = _load_script()
    plan = quality._epochs_plan(num_train=105, batch_size=8, iterations=600, num_validations=4)
    assert plan["iterations_per_epoch"] == 13
    assert plan["iterations"] == plan["epochs"] * 13 >= 600
    assert plan["epochs"] % plan["val_interval"] == 0  # the last epoch is validated
    with pytest.raises(ValueError, match="fewer than one batch"):
        quality._epochs_plan(num_train=3, batch_size=8, iterations=10, num_validations=1)
