# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The ISIC 2018 bundle through MONAI's ConfigWorkflow: properties, a short real train run, inference outputs."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow
from PIL import Image

from monai_diffseg.data import make_synthetic_isic2018

ROOT = Path(__file__).resolve().parents[2]
PH2 = ROOT.parent / "shared" / "data" / "ph2"

TINY = TINY_NETWORKS["medsegdiff_isic2018"]


_workflow = partial(bundle_workflow, "medsegdiff_isic2018")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("isic")
    return make_synthetic_isic2018(str(root), num_train=12, num_val=4, num_test=3, image_size=(40, 56), seed=3)


def test_train_workflow_properties(dataset: str, tmp_path: Path) -> None:
    wf = _workflow("train.json", "train", dataset_dir=dataset, bundle_root=str(tmp_path), **TINY)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    assert wf.train_dataset_data and wf.val_dataset_data


def test_inference_workflow_properties(dataset: str, tmp_path: Path) -> None:
    wf = _workflow("inference.json", "infer", dataset_dir=dataset, bundle_root=str(tmp_path), **TINY)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    assert len(wf.dataset_data) == 3


def test_missing_dataset_dir_is_a_clear_error(tmp_path: Path) -> None:
    wf = _workflow("train.json", "train", dataset_dir=str(tmp_path / "nope"), bundle_root=str(tmp_path), **TINY)
    wf.initialize()
    with pytest.raises(Exception) as err:
        _ = wf.train_dataset_data
    assert "nope" in "".join(str(e) for e in _chain(err.value))


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.mark.slow
def test_train_then_infer_and_evaluate(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train = _workflow(
        "train.json",
        "train",
        dataset_dir=dataset,
        bundle_root=str(out),
        num_epochs=2,
        val_interval=1,
        batch_size=4,
        val_num_inference_steps=2,
        val_num_samples=2,
        **TINY,
    )
    train.initialize()
    train.run()
    train.finalize()
    models = out / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_last.pt").is_file()
    last = torch.load(models / "checkpoint_last.pt", weights_only=False)
    assert {"model", "optimizer", "trainer", "lr_scheduler"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * (12 // 4)  # 2 epochs of 3 batches
    # ShiftStatisticsWriter (after FinalModelSaver): the training images' shift statistics with model.pt's weights
    stats = torch.load(models / "shift_stats.pt", weights_only=True)
    assert stats["num_images"] == len(train.parser.get_parsed_content("datalists")[0]) >= 2
    assert stats["model_file"] == str(models / "model.pt") and stats["feature"]["mean"].shape == (16,)

    # resume: one more epoch continues from epoch 2 instead of starting over
    resume = _workflow(
        "train.json",
        "train",
        dataset_dir=dataset,
        bundle_root=str(out),
        num_epochs=3,
        val_interval=5,
        batch_size=4,
        **TINY,
    )
    resume.initialize()
    resume.run()
    assert resume.trainer.state.epoch == 3 and resume.trainer.state.iteration == 3 * (12 // 4)
    resume.finalize()

    pred_dir = tmp_path / "pred"
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=dataset,
        bundle_root=str(out),
        output_dir=str(pred_dir),
        num_samples=3,
        num_inference_steps=3,
        **TINY,
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    cases = sorted(p.stem for p in Path(dataset, "ISIC2018_Task1-2_Test_Input").glob("ISIC_*.jpg"))
    for case in cases:
        for kind in ("mask", "prob", "overlay", "variance", "entropy", "mutual_information", "consistent", "ambiguous"):
            assert (pred_dir / f"{case}_{kind}.png").is_file(), f"{case}_{kind}.png"
        consistent = np.array(Image.open(pred_dir / f"{case}_consistent.png"))
        assert consistent.shape == (40, 56) and set(np.unique(consistent)) <= {0, 255}
        mask = np.array(Image.open(pred_dir / f"{case}_mask.png"))
        assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 255}  # original size, binary
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["num_cases"] == len(cases) == metrics["num_labelled"]
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    assert [c["case"] for c in metrics["cases"]] == cases
    for case in metrics["cases"]:
        assert 0.0 <= case["sample_diversity"] <= 1.0 and -1e-6 <= case["ged"] <= 2.0
        assert 0.0 <= case["anchor_disagreement"] <= 1.0 and case["entropy_per_area"] >= 0.0  # ShiftScore
        assert 0.0 <= case["ensemble_dice_error"] <= 1.0
        # the training wrote models/shift_stats.pt (ShiftStatisticsWriter), which inference reads beside model.pt
        assert case["input_distance"] >= 0.0 and case["feature_distance"] >= 0.0
    rows = (pred_dir / "metrics.csv").read_text().splitlines()
    header = (
        "case,dice,iou,sample_diversity,sample_diversity_l2,ged,anchor_disagreement,ensemble_dice_error,"
        "entropy_per_area,input_distance,feature_distance"
    )
    assert rows[0] == header and len(rows) == len(cases) + 1

    eval_dir = tmp_path / "eval"
    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        dataset_dir=dataset,
        bundle_root=str(out),
        output_dir=str(eval_dir),
        num_samples=2,
        num_inference_steps=2,
        **TINY,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    state = evaluate.evaluator.state
    assert {"test_mean_dice", "test_mean_iou", "test_hd95"} <= set(state.metrics)
    assert os.path.isfile(eval_dir / "metrics.csv")
    assert json.loads((eval_dir / "metrics.json").read_text())["mean_ged"] is not None


def test_shift_stats_for_an_existing_checkpoint(dataset: str, tmp_path: Path) -> None:
    """`monai.bundle run shift_stats` writes shift_stats.pt beside a checkpoint trained without it."""
    from monai_diffseg.networks.nets import MedSegDiff

    ckpt = tmp_path / "elsewhere" / "model.pt"
    ckpt.parent.mkdir()
    net = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4, anchor_head=True)
    torch.save(net.state_dict(), ckpt)
    wf = _workflow(
        "train.json",
        "train",
        run_id="shift_stats",
        dataset_dir=dataset,
        bundle_root=str(tmp_path),
        **{"train#shift_statistics#model_file": str(ckpt), "train#shift_statistics#max_images": 4},
        **TINY,
    )
    wf.initialize()
    wf.run()
    stats = torch.load(ckpt.parent / "shift_stats.pt", weights_only=True)
    assert stats["num_images"] == 4 and stats["input"]["mean"].shape == (12,) and stats["feature"]["std"].shape == (16,)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["vote", "torch_crf"])
def test_inference_fusion_choice(dataset: str, tmp_path: Path, fusion: str) -> None:
    from monai_diffseg.networks.nets import MedSegDiff

    (tmp_path / "models").mkdir()
    net = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4)
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=dataset,
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        fusion=fusion,
        num_samples=2,
        num_inference_steps=2,
        **TINY,
    )
    infer.initialize()
    infer.run()
    assert len(list((tmp_path / "o").glob("*_mask.png"))) == 3


def test_mismatched_checkpoint_is_a_clear_error(dataset: str, tmp_path: Path) -> None:
    from monai_diffseg.networks.nets import MedSegDiff

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    other = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(16, 32), norm_num_groups=4)
    torch.save({"model": other.state_dict()}, ckpt / "model.pt")
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=dataset,
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        **TINY,
    )
    infer.initialize()
    with pytest.raises(Exception) as err:
        infer.run()
    text = "".join(str(e) for e in _chain(err.value))
    assert "model.pt" in text and "does not match" in text and "checkpoint (16" in text


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not PH2.is_dir(), reason="../shared/data/ph2 not available")
def test_short_training_on_ph2(tmp_path: Path) -> None:
    """Optional: a few epochs on the real PH2 dermoscopy subset, rewritten in the ISIC 2018 layout."""
    from monai_diffseg.data import image_folder_datalist

    pairs = image_folder_datalist(str(PH2 / "images"), str(PH2 / "masks"))[:24]
    root = tmp_path / "ph2_isic"
    for split, part in (("Training", pairs[:20]), ("Validation", pairs[20:])):
        img_dir = root / f"ISIC2018_Task1-2_{split}_Input"
        gt_dir = root / f"ISIC2018_Task1_{split}_GroundTruth"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i, item in enumerate(part):
            case = f"ISIC_{(0 if split == 'Training' else 100) + i:07d}"
            Image.open(item["image"]).convert("RGB").save(img_dir / f"{case}.jpg", quality=95)
            Image.open(item["label"]).convert("L").save(gt_dir / f"{case}_segmentation.png")
    train = _workflow(
        "train.json",
        "train",
        dataset_dir=str(root),
        bundle_root=str(tmp_path / "run"),
        num_epochs=4,
        val_interval=4,
        batch_size=4,
        val_num_inference_steps=5,
        val_num_samples=2,
        image_size=[64, 64],
        num_workers=0,
    )
    train.initialize()
    train.run()
    losses = train.trainer.state.output
    assert isinstance(losses, list) and all(np.isfinite(float(out["loss"])) for out in losses)
    dice = train.parser.get_parsed_content("validate#evaluator").state.best_metric
    assert dice > 0.3, f"validation Dice after a short PH2 training: {dice}"
