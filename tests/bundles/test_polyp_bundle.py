# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The polyp bundle through MONAI's ConfigWorkflow: train on Kvasir-SEG, test on CVC-ClinicDB (the cross-dataset use),
outputs at each frame's own size, per-case scores, evaluation with HD95."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow
from PIL import Image

from monai_diffseg.data import make_synthetic_cvc_clinicdb, make_synthetic_kvasir_seg, polyp_datalist

ROOT = Path(__file__).resolve().parents[2]
KVASIR = ROOT.parent / "shared" / "data" / "kvasir_seg"

TINY = TINY_NETWORKS["medsegdiff_polyp"]
_workflow = partial(bundle_workflow, "medsegdiff_polyp")


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_kvasir_seg(tmp_path_factory.mktemp("kvasir"), num_cases=10, image_size=(32, 40), seed=3)


@pytest.fixture(scope="module")
def cvc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_cvc_clinicdb(tmp_path_factory.mktemp("cvc"), num_cases=5, image_size=(30, 38), seed=4)


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_workflow_properties(kvasir: str, cvc: str, tmp_path: Path) -> None:
    train = _workflow("train.json", "train", dataset_dir=kvasir, bundle_root=str(tmp_path), val_fraction=0.2, **TINY)
    train.initialize()
    assert train.check_properties() in (None, [])
    assert (len(train.train_dataset_data), len(train.val_dataset_data)) == (8, 2)
    infer = _workflow("inference.json", "infer", dataset_dir=cvc, bundle_root=str(tmp_path), **TINY)
    infer.initialize()
    assert infer.check_properties() in (None, [])
    assert [d["case"] for d in infer.dataset_data] == ["1", "2", "3", "4", "5"]


def test_wrong_folder_names_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "data" / "frames").mkdir(parents=True)
    wf = _workflow("train.json", "train", dataset_dir=str(tmp_path / "data"), bundle_root=str(tmp_path), **TINY)
    wf.initialize()
    with pytest.raises(Exception) as err:
        _ = wf.train_dataset_data
    text = "".join(str(e) for e in _chain(err.value))
    assert "Kvasir-SEG: 'images/' + 'masks/'" in text and "CVC-ClinicDB: 'Original/' + 'Ground Truth/'" in text
    assert "frames" in text


def test_train_on_kvasir_test_on_cvc(kvasir: str, cvc: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = _workflow(
        "train.json",
        "train",
        dataset_dir=kvasir,
        bundle_root=str(run),
        num_epochs=2,
        val_interval=1,
        batch_size=4,
        val_fraction=0.2,
        val_num_inference_steps=2,
        val_num_samples=2,
        **TINY,
    )
    train.initialize()
    train.run()
    train.finalize()
    assert (run / "models" / "model.pt").is_file()
    last = torch.load(run / "models" / "checkpoint_last.pt", weights_only=False)
    assert last["trainer"]["iteration"] == 2 * (8 // 4)

    # cross-dataset inference on the CVC-ClinicDB TIFFs: outputs at each frame's own (mixed) size
    out = tmp_path / "cvc_pred"
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=cvc,
        bundle_root=str(run),
        output_dir=str(out),
        num_samples=2,
        num_inference_steps=2,
        batch_size=3,
        **TINY,
    )
    infer.initialize()
    infer.run()
    infer.finalize()
    sizes = {}
    for item in polyp_datalist(cvc):
        sizes[item["case"]] = Image.open(item["image"]).size
        for kind in ("mask", "prob", "overlay", "variance", "entropy", "consistent", "ambiguous"):
            written = Image.open(out / f"{item['case']}_{kind}.png")
            assert written.size == sizes[item["case"]], (item["case"], kind)
        mask = np.asarray(Image.open(out / f"{item['case']}_mask.png"))
        assert set(np.unique(mask)) <= {0, 255}
    assert len(set(sizes.values())) >= 3  # mixed sizes, some in one batch
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == metrics["num_labelled"] == 5 and not metrics["failed"]
    assert [c["case"] for c in metrics["cases"]] == sorted(sizes)
    for case in metrics["cases"]:
        assert 0.0 <= case["iou"] <= case["dice"] <= 1.0
        # ShiftScore per case, the distances from the shift_stats.pt that the training wrote beside model.pt
        assert 0.0 <= case["ensemble_dice_error"] <= 1.0 and 0.0 <= case["anchor_disagreement"] <= 1.0
        assert case["input_distance"] > 0.0 and case["feature_distance"] > 0.0
    assert metrics["mean_dice"] == pytest.approx(np.mean([c["dice"] for c in metrics["cases"]]))

    # evaluation on Kvasir-SEG (its JPEG masks thresholded): MONAI Dice, IoU and HD95 per case
    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        dataset_dir=kvasir,
        bundle_root=str(run),
        output_dir=str(tmp_path / "kvasir_eval"),
        num_samples=2,
        num_inference_steps=2,
        **TINY,
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    assert {"test_mean_dice", "test_mean_iou", "test_hd95"} <= set(evaluate.evaluator.state.metrics)
    scored = json.loads((tmp_path / "kvasir_eval" / "metrics.json").read_text())
    assert scored["num_labelled"] == 10
    assert {"dice", "iou", "hd95"} <= set(scored["cases"][0])
    rows = (tmp_path / "kvasir_eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 11 and {"dice", "iou", "hd95"} <= set(rows[0].split(","))


def test_unlabelled_inference(cvc: str, tmp_path: Path) -> None:
    from monai_diffseg.networks.nets import MedSegDiff

    (tmp_path / "models").mkdir()
    net = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4)
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    infer = _workflow(
        "inference.json",
        "infer",
        dataset_dir=cvc,
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        labels=False,
        num_samples=2,
        num_inference_steps=1,
        **TINY,
    )
    infer.initialize()
    infer.run()
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["num_cases"] == 5 and metrics["num_labelled"] == 0
    assert len(list((tmp_path / "o").glob("*_mask.png"))) == 5


@pytest.mark.realdata
@pytest.mark.skipif(not KVASIR.is_dir(), reason="../shared/data/kvasir_seg not available")
def test_real_kvasir_smoke(tmp_path: Path) -> None:
    """Optional: the bundle on 10 real Kvasir-SEG frames (linked in the release layout), tiny network, 2 iterations."""
    cases = sorted((KVASIR / "images").glob("*.jpg"))[:10]
    root = tmp_path / "Kvasir-SEG"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for image in cases:
            (root / folder / image.name).symlink_to(KVASIR / folder / image.name)
    run = tmp_path / "run"
    common = {"dataset_dir": str(tmp_path), "bundle_root": str(run), **TINY}
    train = _workflow(
        "train.json",
        "train",
        num_epochs=1,
        val_interval=1,
        batch_size=4,
        val_fraction=0.2,
        val_num_inference_steps=2,
        val_num_samples=2,
        **common,
    )
    train.initialize()
    train.run()
    assert np.isfinite(float(train.trainer.state.output[0]["loss"]))
    assert (run / "models" / "model.pt").is_file()
    out = tmp_path / "pred"
    infer = _workflow("inference.json", "infer", output_dir=str(out), num_samples=2, num_inference_steps=2, **common)
    infer.initialize()
    infer.run()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_labelled"] == 10 and not metrics["failed"]
    for image in cases[:3]:
        assert Image.open(out / f"{image.stem}_mask.png").size == Image.open(image).size
