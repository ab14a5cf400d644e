# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The 3D BraTS bundle through MONAI's ConfigWorkflow on synthetic volumes in the official layouts: patch training,
whole-volume sliding-window inference, NIfTI outputs in the input's geometry (affine checked with nibabel), Dice and
HD95 per region, the BraTS 2023 label convention, and what MONAI Label's /infer and /train do with the bundle."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow, single_process_group
from monai.bundle import ConfigParser

from monai_diffseg.data import brats_datalist, make_synthetic_brats
from monai_diffseg.transforms import BratsLabelsToRegions, BratsRegionsToLabels

TINY = TINY_NETWORKS["medsegdiff_brats"]
FAST = {"num_samples": 2, "num_inference_steps": 2}
_workflow = partial(bundle_workflow, "medsegdiff_brats")
SHAPE = (32, 28, 24)  # not a cube: an axis mix-up changes the shape


@pytest.fixture(scope="module")
def brats18(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_brats(tmp_path_factory.mktemp("b18"), "brats2018", num_cases=4, shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def brats23(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_brats(tmp_path_factory.mktemp("b23"), "brats2023", num_cases=2, shape=SHAPE, seed=1)


def _random_model(folder: Path, seed: int = 1) -> None:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "medsegdiff_brats" / "configs" / "inference.json"))
    for key, value in TINY.items():
        parser[key] = value
    torch.manual_seed(seed)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, folder / "models" / "model.pt")


def test_workflow_properties(brats18: str, tmp_path: Path) -> None:
    train = _workflow("train.json", "train", dataset_dir=brats18, bundle_root=str(tmp_path), val_fraction=0.25, **TINY)
    train.initialize()
    assert train.check_properties() in (None, [])
    assert (len(train.train_dataset_data), len(train.val_dataset_data)) == (3, 1)
    infer = _workflow("inference.json", "infer", dataset_dir=brats18, bundle_root=str(tmp_path), **TINY)
    infer.initialize()
    assert infer.check_properties() in (None, [])
    assert [d["case"] for d in infer.dataset_data] == [f"Brats18_Synth_{k}_1" for k in range(4)]


def test_preprocessing_inverts_to_the_input_geometry(brats18: str) -> None:
    """Reorientation to RAS and the brain crop are undone exactly: the network-grid label, inverted like the
    prediction, is the label in the file's own voxel grid."""
    from monai.transforms import Invertd

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "medsegdiff_brats" / "configs" / "inference.json"))
    for key, value in TINY.items():
        parser[key] = value
    pre = parser.get_parsed_content("preprocessing")
    item = brats_datalist(brats18)[1]
    d = pre(dict(item))
    assert d["image"].shape[0] == 4 and d["image"].shape[1:] != SHAPE  # cropped to the brain
    assert d["image"].shape[1:] == d["label_net"].shape[1:]
    assert [d["image"].affine[i, i] for i in range(3)] == [1.0, 1.0, 1.0]  # RAS, the file is LPS-like
    inside = d["image"][3] != 0
    assert d["image"][3][inside].max() < 10  # the saturated FLAIR voxel is clipped before z-scoring
    d["pred"] = d["label_net"].clone()
    restored = Invertd("pred", transform=pre, orig_keys="image")(d)["pred"]
    seg = nib.load(item["label"]).get_fdata()
    truth = BratsLabelsToRegions(4)(torch.as_tensor(seg)[None])
    assert truth.sum() > 0
    torch.testing.assert_close(torch.as_tensor(restored), torch.as_tensor(truth), check_dtype=False)
    np.testing.assert_allclose(np.asarray(restored.affine), nib.load(item["image"][0]).affine, atol=1e-6)


def test_train_infer_evaluate(brats18: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = _workflow(
        "train.json",
        "train",
        dataset_dir=brats18,
        bundle_root=str(run),
        num_epochs=2,
        val_interval=1,
        batch_size=2,
        num_patches=2,
        val_fraction=0.25,
        val_num_inference_steps=2,
        val_num_samples=2,
        **TINY,
    )
    train.initialize()
    train.run()
    train.finalize()
    assert (run / "models" / "model.pt").is_file()
    last = torch.load(run / "models" / "checkpoint_last.pt", weights_only=False)
    assert last["trainer"]["iteration"] == 2 * (3 // 2)  # 3 training volumes, 2 per batch, drop_last
    assert np.isfinite(float(train.trainer.state.output[0]["loss"]))

    out = tmp_path / "pred"
    evaluate = _workflow(
        ["inference.json", "evaluate.json"],
        "eval",
        dataset_dir=brats18,
        bundle_root=str(run),
        output_dir=str(out),
        **FAST,
        **TINY,
    )
    evaluate.initialize()
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
        # the label map is the BraTS reading of the thresholded region probabilities
        expected = BratsRegionsToLabels(4)(torch.as_tensor(np.moveaxis(prob, -1, 0)))
        np.testing.assert_array_equal(seg, expected.numpy())
        entropy = nib.load(out / f"{case}_entropy.nii.gz").get_fdata()
        assert entropy.min() >= 0 and entropy.max() <= np.log(2) + 1e-6
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == metrics["num_labelled"] == 4 and not metrics["failed"]
    for case in metrics["cases"]:
        assert case["dice"] == pytest.approx(np.mean([case[f"dice_{r}"] for r in ("tc", "wt", "et")]))
        assert {"hd95_tc", "hd95_wt", "hd95_et"} <= set(case)
    assert metrics["mean_dice"] == pytest.approx(np.mean([c["dice"] for c in metrics["cases"]]))
    assert {"test_mean_dice", "test_hd95"} <= set(evaluate.evaluator.state.metrics)


def test_brats2023_labels(brats23: str, tmp_path: Path) -> None:
    """BraTS 2023 marks the enhancing tumour 3: et_label=3 reads and writes it; the default 4 stops with the fix."""
    _random_model(tmp_path)
    out = tmp_path / "pred"
    common = {"dataset_dir": brats23, "bundle_root": str(tmp_path), "output_dir": str(out), **FAST, **TINY}
    infer = _workflow("inference.json", "infer", et_label=3, **common)
    infer.initialize()
    infer.run()
    names = sorted(p.name for p in out.glob("*_seg.nii.gz"))
    assert names == ["BraTS-GLI-00000-000_seg.nii.gz", "BraTS-GLI-00001-000_seg.nii.gz"]
    seg = np.asarray(nib.load(out / names[0]).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    assert json.loads((out / "metrics.json").read_text())["num_labelled"] == 2
    wrong = _workflow("inference.json", "infer", skip_failed=False, **common)
    wrong.initialize()
    with pytest.raises(Exception) as err:
        wrong.run()
    text = repr(err.value) + "".join(str(e) for e in (err.value.__cause__, err.value.__context__) if e)
    assert "set et_label=3" in text


def test_monailabel_infer_and_train(brats18: str, tmp_path: Path) -> None:
    """MONAI Label 0.8.5 re-enacted: /infer on a 4D NIfTI returns the BraTS label map in the volume's geometry and
    writes nothing into the bundle; /train on two labelled volumes writes model.pt."""
    from monailabel_emulation import serve_infer, serve_train

    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "bundles" / "medsegdiff_brats", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    for name in ("inference.json", "train.json"):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / name))
        for key, value in {**TINY, **FAST, "val_num_samples": 2, "val_num_inference_steps": 2}.items():
            if key.split("#")[0] in parser.config:
                parser[key] = value
        ConfigParser.export_config_file(parser.config, str(bundle / "configs" / name), indent=4)
    _random_model(bundle)
    store = []
    for item in brats_datalist(brats18)[:2]:  # MONAI Label's datastore: one 4-channel volume per image
        volumes = [nib.load(f) for f in item["image"]]
        four = nib.Nifti1Image(np.stack([np.asarray(v.dataobj) for v in volumes], -1), volumes[0].affine)
        path = tmp_path / f"{item['case']}.nii.gz"
        nib.save(four, str(path))
        store.append({"image": str(path), "label": item["label"]})
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    label_file, data = serve_infer(bundle, store[0]["image"])
    pred = data["pred"]
    assert tuple(pred.shape) == SHAPE and pred.dtype == torch.uint8
    assert set(torch.unique(pred).tolist()) <= {0, 1, 2, 4}
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channel_def["0"] == "background" and set(map(int, channel_def)) == {0, 1, 2, 4}
    np.testing.assert_allclose(np.asarray(pred.affine), nib.load(store[0]["image"]).affine, atol=1e-5)
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before  # nothing written when served
    written = nib.load(label_file)  # the file MONAI Label's Writer returns (.nii.gz like the input)
    np.testing.assert_array_equal(np.asarray(written.dataobj), pred.numpy())
    np.testing.assert_allclose(written.affine, nib.load(store[0]["image"]).affine, atol=1e-5)
    Path(label_file).unlink()
    stamp = (bundle / "models" / "model.pt").stat().st_mtime_ns
    serve_train(bundle, store, max_epochs=1, extra=TINY)
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns != stamp


def test_multi_gpu_evaluate_wiring(brats18: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """multi_gpu_evaluate.json on one process (no GPU: gloo and the CPU, as the config chooses): the distributed sampler
    feeds the evaluator, every case leaves a record and the merged metrics.json has the per-region scores."""

    _random_model(tmp_path)
    out = tmp_path / "pred"
    with single_process_group(monkeypatch):
        wf = _workflow(
            ["inference.json", "evaluate.json", "multi_gpu_evaluate.json"],
            "eval",
            dataset_dir=brats18,
            bundle_root=str(tmp_path),
            output_dir=str(out),
            **FAST,
            **TINY,
        )
        try:
            wf.initialize()
            wf.run()
        finally:
            wf.finalize()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == metrics["num_cases_run"] == 4
    assert len((out / "case_records" / "rank0.jsonl").read_text().splitlines()) == 4
    assert {"dice_tc", "dice_wt", "dice_et", "hd95_tc", "hd95_wt", "hd95_et"} <= set(metrics["cases"][0])


def test_multi_gpu_train_wiring(brats18: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """multi_gpu_train.json on one process (no GPU: gloo and CPU DDP, as the config chooses): trains, validates, saves."""

    with single_process_group(monkeypatch):
        wf = _workflow(
            ["train.json", "multi_gpu_train.json"],
            "train",
            dataset_dir=brats18,
            bundle_root=str(tmp_path),
            num_epochs=1,
            val_interval=1,
            val_fraction=0.25,
            val_num_inference_steps=1,
            val_num_samples=2,
            **TINY,
        )
        try:
            wf.initialize()
            wf.run()
            assert (tmp_path / "models" / "model.pt").is_file() and wf.trainer.state.iteration == 1
        finally:
            wf.finalize()
