# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The BraTS bundle's 2D slice mode (train_2d.json, inference_2d.json overlays) through MONAI's ConfigWorkflow on
synthetic volumes in the official layout: a 2D MedSegDiff trained on axial slices of the cached volumes, sampled slice
by slice, stacked back into volumes written as NIfTI with the input's affine and scored per volume."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow, single_process_group
from monai.bundle import ConfigParser

from monai_diffseg.data import brats_datalist, make_synthetic_brats
from monai_diffseg.inferers import DiffusionSliceInferer
from monai_diffseg.transforms import BratsRegionsToLabels

TINY = TINY_NETWORKS["medsegdiff_brats"]
TRAIN_2D = {**TINY, "roi_size": [32, 32, 1], "num_patches": 3}
INFER_2D = {**TINY, "roi_size": [32, 32], "num_samples": 2, "num_inference_steps": 2, "sw_batch_size": 5}
_workflow = partial(bundle_workflow, "medsegdiff_brats")
SHAPE = (32, 28, 24)  # not a cube: an axis mix-up changes the shape


@pytest.fixture(scope="module")
def brats18(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_brats(tmp_path_factory.mktemp("b18"), "brats2018", num_cases=4, shape=SHAPE, seed=0)


def test_training_slices(brats18: str) -> None:
    """train_2d.json draws 2D axial slices (4 modalities, TC/WT/ET) of the roi's in-plane size from the cropped,
    normalised volumes, mostly through the tumour (pos 2 : neg 1), and builds a 2D network."""
    parser = ConfigParser()
    parser.read_config(
        [str(ROOT / "bundles" / "medsegdiff_brats" / "configs" / c) for c in ("train.json", "train_2d.json")]
    )
    for key, value in {**TRAIN_2D, "dataset_dir": brats18, "val_fraction": 0.25}.items():
        parser[key] = value
    pre = parser.get_parsed_content("train#preprocessing")
    item = parser.get_parsed_content("train_datalist")[0]
    pre.set_random_state(0)
    slices = pre(dict(item))
    assert len(slices) == 3
    for s in slices:
        assert tuple(s["image"].shape) == (4, 32, 32) and tuple(s["label"].shape) == (3, 32, 32)
    assert sum(bool(s["label"].sum() > 0) for s in slices) >= 1
    assert parser.get_parsed_content("network_def").spatial_dims == 2
    inferer = parser.get_parsed_content("validate#inferer")
    assert isinstance(inferer, DiffusionSliceInferer) and inferer.roi_size == (32, 32) and inferer.spatial_dim == 2


def test_train_infer_evaluate_2d(brats18: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = _workflow(
        ["train.json", "train_2d.json"],
        "train",
        dataset_dir=brats18,
        bundle_root=str(run),
        num_epochs=2,
        val_interval=1,
        batch_size=2,
        val_fraction=0.25,
        val_num_inference_steps=2,
        val_num_samples=2,
        **TRAIN_2D,
    )
    train.initialize()
    assert train.check_properties() in (None, [])
    train.run()
    train.finalize()
    assert (run / "models_2d" / "model.pt").is_file() and not (run / "models").exists()  # beside the 3D weights
    last = torch.load(run / "models_2d" / "checkpoint_last.pt", weights_only=False)
    assert last["trainer"]["iteration"] == 2 * (3 // 2)  # 3 training volumes, 2 per batch, drop_last
    assert len(train.trainer.state.output) == 2 * 3  # 2 volumes x 3 slices per iteration
    assert np.isfinite(float(train.trainer.state.output[0]["loss"]))
    validator = train.parser.get_parsed_content("validate#evaluator")
    assert 0 <= validator.state.metrics["val_mean_dice"] <= 1  # validated on whole volumes, slice by slice

    out = tmp_path / "pred"
    evaluate = _workflow(
        ["inference.json", "inference_2d.json", "evaluate.json"],
        "eval",
        dataset_dir=brats18,
        bundle_root=str(run),
        output_dir=str(out),
        **INFER_2D,
    )
    evaluate.initialize()
    assert isinstance(evaluate.inferer, DiffusionSliceInferer)
    evaluate.run()
    evaluate.finalize()
    for item in brats_datalist(brats18):
        case, source = item["case"], nib.load(item["image"][0])
        for kind, shape in (("seg", SHAPE), ("prob", (*SHAPE, 3)), ("variance", (*SHAPE, 3)), ("entropy", (*SHAPE, 3))):
            written = nib.load(out / f"{case}_{kind}.nii.gz")
            assert written.shape == shape, (case, kind)
            np.testing.assert_array_equal(written.affine, source.affine)  # overlays on the input in any viewer
        seg = np.asarray(nib.load(out / f"{case}_seg.nii.gz").dataobj)
        prob = nib.load(out / f"{case}_prob.nii.gz").get_fdata()
        assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 4}
        expected = BratsRegionsToLabels(4)(torch.as_tensor(np.moveaxis(prob, -1, 0)))
        np.testing.assert_array_equal(seg, expected.numpy())
        empty = ~(np.asarray(source.dataobj) != 0).any(axis=(0, 1))  # axial slices without brain
        assert empty.any() and prob[:, :, empty].max() == 0  # outside the crop or skipped: probability 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == metrics["num_labelled"] == 4 and not metrics["failed"]
    for case in metrics["cases"]:
        assert case["dice"] == pytest.approx(np.mean([case[f"dice_{r}"] for r in ("tc", "wt", "et")]))
        assert {"hd95_tc", "hd95_wt", "hd95_et"} <= set(case)


def test_multi_gpu_train_2d_wiring(brats18: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2D overlay stacks under multi_gpu_train.json unchanged (one process: gloo and CPU DDP without CUDA)."""
    with single_process_group(monkeypatch):
        wf = _workflow(
            ["train.json", "train_2d.json", "multi_gpu_train.json"],
            "train",
            dataset_dir=brats18,
            bundle_root=str(tmp_path),
            num_epochs=1,
            val_interval=1,
            val_fraction=0.25,
            val_num_inference_steps=1,
            val_num_samples=2,
            **TRAIN_2D,
        )
        try:
            wf.initialize()
            wf.run()
            assert (tmp_path / "models_2d" / "model.pt").is_file() and wf.trainer.state.iteration == 1
            assert wf.parser.get_parsed_content("network_def").spatial_dims == 2
            assert isinstance(wf.parser.get_parsed_content("network"), torch.nn.parallel.DistributedDataParallel)
        finally:
            wf.finalize()
