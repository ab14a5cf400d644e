# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Smoke test of benchmarks/quality.py on a tiny synthetic images/ + masks/ folder with a tiny budget."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from monai_diffseg.data import synthetic_lesion_sample

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality.py"


def _load_script() -> SimpleNamespace:
    """The benchmark script's globals, without running its ``main``."""
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))


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


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    inter, total = float((pred & label).sum()), float(pred.sum() + label.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def test_quality_report(folder: Path, tmp_path: Path) -> None:
    quality = _load_script()
    torch.manual_seed(0)
    output = tmp_path / "report.json"
    tiny = json.dumps({"channels": [8, 16], "cond_channels": [8, 16], "norm_num_groups": 4})
    report = quality.main(
        [
            "--data",
            str(folder),
            "--mask-threshold",
            "127",
            "--image-size",
            "32",
            "--iterations",
            "6",
            "--batch-size",
            "4",
            "--num-validations",
            "1",
            "--network-config",
            tiny,
            "--steps",
            "2",
            "--members",
            "3",
            "--baseline-channels",
            "4",
            "8",
            "--baseline-res-units",
            "0",
            "--quiet",
            "--work-dir",
            str(tmp_path / "work"),
            "--output",
            str(output),
        ]
    )
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    split = report["split"]
    assert (split["train"], split["val"], split["test"]) == (10, 1, 3)  # 0.7/0.1/0.2 of 14, largest remainder
    assert report["budget"]["iterations"] == 6  # 10 // 4 = 2 iterations per epoch, 3 epochs
    for name in ("medsegdiff", "baseline"):
        entry = report["models"][name]
        assert entry["train"]["iterations"] == report["budget"]["iterations"]
        cases, summary = entry["cases"], entry["summary"]
        assert [c["case"] for c in cases] == split["test_cases"] and summary["num_cases"] == 3
        # tested through the bundle's inference: its written masks (at the original 40x48) give the reported Dice
        for case in cases:
            written = np.asarray(Image.open(tmp_path / "work" / name / "inference" / f"{case['case']}_mask.png")) > 127
            label = np.asarray(Image.open(folder / "masks" / f"{case['case']}.png")) > 127
            assert written.shape == label.shape == (40, 48)
            assert case["dice"] == pytest.approx(_dice(written, label), abs=1e-6)
        assert summary["dice"] == pytest.approx(np.mean([c["dice"] for c in cases]))
        # the summary's rank correlation is that of the per-case scores (None only where it is undefined)
        primary = quality.PRIMARY_UNCERTAINTY if name == "medsegdiff" else quality.BASELINE_PRIMARY_UNCERTAINTY
        assert summary["primary_uncertainty"] == primary
        unc, err = [c[primary] for c in cases], [1.0 - c["dice"] for c in cases]
        expected = None if np.ptp(unc) == 0 or np.ptp(err) == 0 else spearmanr(unc, err).statistic
        assert summary["spearman_primary"] == (None if expected is None else pytest.approx(expected))
        least = min(cases, key=lambda c: c["entropy_fg"])["dice"]
        assert summary["uncertainty"]["entropy_fg"]["dice_least_uncertain_quarter"] == pytest.approx(least)
    msd = report["models"]["medsegdiff"]
    assert (msd["summary"]["steps"], msd["summary"]["members"]) == (2, 3)
    assert set(msd["summary"]["uncertainty"]) == set(quality.UNCERTAINTY_SCORES)
    for case in msd["cases"]:
        assert case["ged_sqrt"] == pytest.approx(math.sqrt(max(case["ged"], 0.0)))
        assert {"diversity", "diversity_l2", "mutual_info_mean", "anchor_dice"} <= set(case)
    # the baseline's one-member "ensemble" has no spread: its GED^2 is twice its distance to the annotation
    for case in report["models"]["baseline"]["cases"]:
        assert case["diversity"] == 0.0 and case["ged"] >= 0.0
    # paired per-case comparison on every shared score, with the direction of "better" per score
    paired = report["paired"]
    assert paired["dice"]["cases"] == 3 and not paired["dice"]["lower_is_better"] and paired["hd95"]["lower_is_better"]
    ours = {c["case"]: c["dice"] for c in msd["cases"]}
    base = {c["case"]: c["dice"] for c in report["models"]["baseline"]["cases"]}
    assert paired["dice"]["ours_better"] == sum(ours[k] > base[k] for k in ours)


def test_datalist_builder_option(folder: Path) -> None:
    quality = _load_script()
    args = quality.parse_args(
        [
            "--data",
            str(folder),
            "--datalist",
            "monai_diffseg.data.image_folder_datalist",
            "--datalist-args",
            json.dumps({"mask_dir": str(folder / "masks")}),
        ]
    )
    items = quality._build_datalist(args, folder / "images")
    # called as FUNCTION(data, **args): data is the image folder here
    assert len(items) == 14 and items[0]["case"] == "case00" and items[0]["label"].endswith("case00.png")
    args.datalist = "image_folder_datalist"
    with pytest.raises(ValueError, match="MODULE.FUNCTION"):
        quality._build_datalist(args, folder)


def test_epochs_plan_equal_budget() -> None:
    quality = _load_script()
    plan = quality._epochs_plan(num_train=105, batch_size=8, iterations=600, num_validations=4)
    assert plan["iterations_per_epoch"] == 13
    assert plan["iterations"] == plan["epochs"] * 13 >= 600
    assert plan["epochs"] % plan["val_interval"] == 0  # the last epoch is validated
    with pytest.raises(ValueError, match="fewer than one batch"):
        quality._epochs_plan(num_train=3, batch_size=8, iterations=10, num_validations=1)
