# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Both ISIC bundles on archives as users have them: mixed image sizes at any batch size, damaged files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow
from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_diffseg.data import make_synthetic_isic2018

TEST_IN, TEST_GT = "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"
TINY = {
    "medsegdiff_isic2018": {**TINY_NETWORKS["medsegdiff_isic2018"], "num_samples": 2, "num_inference_steps": 2},
    "diffseg_isic2018": {**TINY_NETWORKS["diffseg_isic2018"], "timesteps": [60, 100]},
}


def _workflow(bundle: str, configs: list[str], **override) -> ConfigWorkflow:
    return bundle_workflow(bundle, configs, "infer", **TINY[bundle], **override)


def _run(bundle: str, configs: list[str], dataset: str, root: Path, out: Path, **override) -> dict:
    """Run a bundle workflow at batch size 4 and return the metrics.json it wrote."""
    wf = _workflow(
        bundle, configs, dataset_dir=dataset, bundle_root=str(root), output_dir=str(out), batch_size=4, **override
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((out / "metrics.json").read_text())


def _random_weights(bundle: str, models: Path, dataset: str) -> None:
    """Write untrained weights where the bundle's inference loads them (only the plumbing is tested here)."""
    models.mkdir(parents=True, exist_ok=True)
    wf = _workflow(bundle, ["inference.json"], dataset_dir=dataset, bundle_root=str(models.parent))
    torch.manual_seed(0)
    net = wf.parser.get_parsed_content("network_def")
    if bundle == "diffseg_isic2018":
        torch.save(net.lesion.state_dict(), models / "model_lesion.pt")
        torch.save(net.healthy.state_dict(), models / "model_healthy.pt")
    else:
        torch.save(net.state_dict(), models / "model.pt")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("isic_mixed")
    return make_synthetic_isic2018(
        str(root), num_train=2, num_val=0, num_test=6, image_size=(40, 56), seed=11, mixed_sizes=True
    )


def test_synthetic_set_has_realistic_mixed_sizes(mixed: str) -> None:
    sizes = {Image.open(p).size for p in Path(mixed, TEST_IN).glob("*.jpg")}
    ratios = {round(w / h, 1) for w, h in sizes}
    assert len(sizes) >= 4 and len(ratios) >= 2


def test_medsegdiff_inference_and_evaluation_on_mixed_sizes(mixed: str, tmp_path: Path) -> None:
    bundle = "medsegdiff_isic2018"
    _random_weights(bundle, tmp_path / "models", mixed)
    out = tmp_path / "eval"
    metrics = _run(bundle, ["inference.json", "evaluate.json"], mixed, tmp_path, out)
    assert metrics["num_cases"] == 6 and metrics["num_failed"] == 0
    for case in metrics["cases"]:
        image = Image.open(Path(mixed, TEST_IN, f"{case['case']}.jpg"))
        truth = np.asarray(Image.open(Path(mixed, TEST_GT, f"{case['case']}_segmentation.png")))
        mask = np.asarray(Image.open(out / f"{case['case']}_mask.png"))
        for kind in ("prob", "entropy", "overlay"):
            assert Image.open(out / f"{case['case']}_{kind}.png").size == image.size
        assert mask.shape == truth.shape  # written and scored at each case's own size
        assert case["dice"] == pytest.approx(_dice(mask, truth), abs=1e-6)
    assert metrics["engine_metrics"]["test_mean_dice"] == pytest.approx(metrics["mean_dice"], abs=1e-6)


def test_diffseg_inference_on_mixed_sizes(mixed: str, tmp_path: Path) -> None:
    bundle = "diffseg_isic2018"
    _random_weights(bundle, tmp_path / "models", mixed)
    out = tmp_path / "pred"
    metrics = _run(bundle, ["inference.json"], mixed, tmp_path, out, labels=True)
    for image in Path(mixed, TEST_IN).glob("*.jpg"):
        mask = Image.open(out / f"{image.stem}_mask.png")
        assert mask.size == Image.open(image).size
    assert metrics["num_labelled"] == 6


def _damage(src: str, dst: Path) -> dict[str, str]:
    """A copy of the test split damaged one way per case; returns case -> what was done."""
    shutil.copytree(src, dst)
    images, masks = dst / TEST_IN, dst / TEST_GT
    cases = sorted(p.stem for p in images.glob("*.jpg"))
    done = dict(zip(cases, ["truncated", "grayscale", "rgba", "gray16", "empty", "mask_size"]))
    for case, what in done.items():
        jpg = images / f"{case}.jpg"
        if what == "truncated":
            data = jpg.read_bytes()
            jpg.write_bytes(data[: len(data) // 2])
        elif what == "grayscale":
            Image.open(jpg).convert("L").save(jpg)
        elif what == "rgba":
            Image.open(jpg).convert("RGBA").save(images / f"{case}.png")
            jpg.unlink()
        elif what == "gray16":
            gray = np.asarray(Image.open(jpg).convert("L")).astype(np.uint16) * 257
            Image.fromarray(gray).save(images / f"{case}.png")
            jpg.unlink()
        elif what == "empty":
            jpg.write_bytes(b"")
        else:
            mask = Image.open(masks / f"{case}_segmentation.png")
            mask.resize((mask.size[0] + 3, mask.size[1]), Image.NEAREST).save(masks / f"{case}_segmentation.png")
    return done


def test_damaged_cases_are_skipped_and_listed(mixed: str, tmp_path: Path) -> None:
    bundle = "medsegdiff_isic2018"
    damaged = _damage(mixed, tmp_path / "data")
    _random_weights(bundle, tmp_path / "models", mixed)
    out = tmp_path / "pred"
    metrics = _run(bundle, ["inference.json"], str(tmp_path / "data"), tmp_path, out)
    bad = {c: w for c, w in damaged.items() if w in ("truncated", "empty", "mask_size")}
    assert {f["case"] for f in metrics["failed"]} == set(bad) and metrics["num_failed"] == 3
    reasons = {f["case"]: f["reason"] for f in metrics["failed"]}
    for case, what in bad.items():
        assert case in reasons[case]  # the reason names the file
        assert {"truncated": "truncated", "empty": "0 bytes", "mask_size": "same size"}[what] in reasons[case]
    converted = sorted(c for c, w in damaged.items() if c not in bad)
    assert [c["case"] for c in metrics["cases"]] == converted
    for case in converted:
        assert Image.open(out / f"{case}_mask.png").mode == "L"

    strict = _workflow(
        bundle,
        ["inference.json"],
        dataset_dir=str(tmp_path / "data"),
        bundle_root=str(tmp_path),
        output_dir=str(tmp_path / "strict"),
        batch_size=4,
        skip_failed=False,
    )
    strict.initialize()
    with pytest.raises(Exception) as err:
        strict.run()
    chain, exc = [], err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    first_bad = min(bad)
    assert any(first_bad in text and "skip_failed=True" in text for text in chain)
