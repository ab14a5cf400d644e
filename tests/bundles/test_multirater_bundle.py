# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The multi-rater bundle through MONAI's ConfigWorkflow on synthetic case folders (QUBIQ layout) and LIDC crops:
one rater drawn per iteration, inference outputs at the original size, GED/HM-IoU/per-rater Dice in metrics.json."""

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

from monai_diffseg.data import make_synthetic_case_folders, make_synthetic_lidc_crops
from monai_diffseg.networks.nets import MedSegDiff

TINY = TINY_NETWORKS["medsegdiff_multirater"]
QUBIQ = ROOT.parent / "shared" / "data" / "qubiq_brain_growth"

_workflow = partial(bundle_workflow, "medsegdiff_multirater")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> str:
    # 3 raters, one case of another size (mixed sizes in one inference batch)
    root = make_synthetic_case_folders(tmp_path_factory.mktemp("qubiq"), num_cases=6, num_raters=3, seed=1)
    odd = make_synthetic_case_folders(tmp_path_factory.mktemp("odd"), num_cases=1, num_raters=3, image_size=(24, 40))
    for name in os.listdir(os.path.join(odd, "case01")):
        os.replace(os.path.join(odd, "case01", name), os.path.join(root, "case06", name))
    return root


@pytest.fixture(scope="module")
def lidc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_lidc_crops(tmp_path_factory.mktemp("lidc"), {"train": 2, "val": 1, "test": 1})


def _tiny_checkpoint(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    net = MedSegDiff(2, 1, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4)
    torch.save(net.state_dict(), folder / "model.pt")


def test_train_draws_one_rater_per_iteration_reproducibly(cases: str, tmp_path: Path) -> None:
    def labels(seed: int) -> list[torch.Tensor]:
        wf = _workflow("train.json", "train", dataset_dir=cases, bundle_root=str(tmp_path), **TINY)
        wf.initialize()
        assert wf.check_properties() in (None, [])
        import monai

        monai.utils.set_determinism(seed)
        ds = wf.parser.get_parsed_content("train#dataset")
        return [ds[0]["label"] for _ in range(12)]

    a, b = labels(0), labels(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # seeded: the same raters again
    distinct = {tuple(x.flatten().tolist()) for x in a}
    assert len(distinct) > 1  # the epochs draw different raters (the synthetic raters differ)
    assert all(x.shape == (1, 32, 32) for x in a)


def test_train_then_infer_and_evaluate(cases: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train = _workflow(
        "train.json",
        "train",
        dataset_dir=cases,
        bundle_root=str(out),
        num_epochs=1,
        val_interval=1,
        batch_size=2,
        val_num_inference_steps=2,
        val_num_samples=2,
        **TINY,
    )
    train.initialize()
    train.run()
    train.finalize()
    assert (out / "models" / "model.pt").is_file()
    assert "val_mean_dice_majority" in train.parser.get_parsed_content("validate#evaluator").state.metrics

    pred = tmp_path / "pred"
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=cases,
        bundle_root=str(out),
        output_dir=str(pred),
        num_samples=2,
        num_inference_steps=2,
        batch_size=4,
        **TINY,
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    for case, size in (("case01", (32, 32)), ("case06", (24, 40))):
        for kind in ("mask", "prob", "variance", "agreement"):
            arr = np.array(Image.open(pred / case / f"image_{kind}.png"))
            assert arr.shape == size, (case, kind)
    agreement = np.array(Image.open(pred / "case01" / "image_agreement.png"))
    raters = np.stack([np.array(Image.open(Path(cases, "case01", f"rater{k}.png"))) > 0 for k in (1, 2, 3)])
    np.testing.assert_allclose(agreement, np.round(raters.mean(0) * 255), atol=1)
    metrics = json.loads((pred / "metrics.json").read_text())
    assert [c["case"] for c in metrics["cases"]] == [f"case{i:02d}" for i in range(1, 7)]
    for c in metrics["cases"]:
        assert {"dice", "ged", "hm_iou", "dice_raters", "dice_rater1", "dice_rater2", "dice_rater3"} <= set(c)
        assert c["dice_raters"] == pytest.approx(np.mean([c[f"dice_rater{k}"] for k in (1, 2, 3)]))
        assert 0.0 <= c["ensemble_dice_error"] <= 1.0 and c["input_distance"] > 0.0  # ShiftScore, shift_stats.pt
    header = (pred / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"ged", "hm_iou", "dice_raters", "dice_rater3"} <= set(header)

    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        dataset_dir=cases,
        bundle_root=str(out),
        output_dir=str(tmp_path / "eval"),
        num_samples=2,
        num_inference_steps=2,
        **TINY,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    assert {"test_mean_dice", "test_mean_iou"} <= set(evaluate.evaluator.state.metrics)
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["mean_ged"] is not None and ev["mean_hm_iou"] is not None


def test_inference_on_lidc_crops_names_cases_by_patient_and_slice(lidc: str, tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "models")
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=lidc,
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        num_samples=2,
        num_inference_steps=2,
        **TINY,
    )
    infer.initialize()
    infer.run()
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [c["case"] for c in metrics["cases"]] == ["LIDC-IDRI-0004_z-105.0_c0", "LIDC-IDRI-0004_z-107.5_c0"]
    assert all(f"dice_rater{k}" in c for c in metrics["cases"] for k in (1, 2, 3, 4))
    assert (tmp_path / "o" / "test" / "images" / "LIDC-IDRI-0004" / "z-105.0_c0_mask.png").is_file()
    assert (tmp_path / "o" / "test" / "images" / "LIDC-IDRI-0004" / "z-105.0_c0_overlay.png").is_file()


def test_cli_inference_without_labels(cases: str, tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "models")
    folder = ROOT / "bundles" / "medsegdiff_multirater" / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(folder / "inference.json")]
    cmd += ["--meta_file", str(folder / "metadata.json"), "--logging_file", str(folder / "logging.conf")]
    args = {"dataset_dir": cases, "bundle_root": str(tmp_path), "output_dir": str(tmp_path / "o"), "labels": False}
    args.update(num_samples=2, num_inference_steps=2, **TINY)
    for k, v in args.items():
        cmd += [f"--{k}", v if isinstance(v, str) else str(v) if isinstance(v, bool) else json.dumps(v)]
    subprocess.run(cmd, check=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert len(list((tmp_path / "o").glob("case*/image_mask.png"))) == 6
    assert len(list((tmp_path / "o").glob("case*/image_overlay.png"))) == 6  # one per case, none overwritten
    assert [c["case"] for c in json.loads((tmp_path / "o" / "metrics.json").read_text())["cases"]][:2] == [
        "case01",
        "case02",
    ]  # the data list's case ids, also without labels
    assert not list((tmp_path / "o").glob("case*/image_agreement.png"))
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["num_cases"] == 6 and metrics["num_labelled"] == 0


@pytest.mark.realdata
@pytest.mark.skipif(not QUBIQ.is_dir(), reason="../shared/data/qubiq_brain_growth not available")
def test_real_qubiq_datalist_and_one_inference_pass(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "models")
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=str(QUBIQ),
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        num_samples=2,
        num_inference_steps=1,
        **TINY,
    )
    infer.initialize()
    assert len(infer.dataset_data) == 27
    infer.run()
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["num_labelled"] == 27 and all("dice_rater7" in c for c in metrics["cases"])
