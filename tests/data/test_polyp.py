# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Polyp data lists (Kvasir-SEG, CVC-ClinicDB) on synthetic copies of the released layouts, and the generators."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_diffseg.data import (
    cvc_clinicdb_datalist,
    detect_polyp_format,
    kvasir_seg_datalist,
    make_synthetic_cvc_clinicdb,
    make_synthetic_kvasir_seg,
    polyp_datalist,
    polyp_train_val_datalists,
    synthetic_polyp_sample,
)
from monai_diffseg.transforms import BinaryMaskd, LoadImage2Dd


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_kvasir_seg(tmp_path_factory.mktemp("kvasir"), num_cases=10, image_size=(24, 32), seed=1)


@pytest.fixture(scope="module")
def cvc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_cvc_clinicdb(tmp_path_factory.mktemp("cvc"), num_cases=12, image_size=(24, 32), seed=2)


# ---------------------------------------------------------------------------------------------- Kvasir-SEG layout


def test_kvasir_release_layout(kvasir: str) -> None:
    base = os.path.join(kvasir, "Kvasir-SEG")
    assert sorted(os.listdir(base)) == ["images", "kavsir_bboxes.json", "masks"]
    from_parent, from_root = kvasir_seg_datalist(kvasir), kvasir_seg_datalist(base)  # the zip's parent or the folder
    assert from_parent == from_root and len(from_root) == 10
    cases = [item["case"] for item in from_root]
    assert cases == sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(base, "images")))
    for item in from_root:
        assert item["image"] == os.path.join(base, "images", item["case"] + ".jpg")
        assert item["label"] == os.path.join(base, "masks", item["case"] + ".jpg")
    assert polyp_datalist(kvasir) == from_root and detect_polyp_format(kvasir) == "kvasir_seg"


def test_kvasir_labels_option(kvasir: str, tmp_path: Path) -> None:
    assert all("label" not in item for item in kvasir_seg_datalist(kvasir, labels=False))
    images_only = tmp_path / "Kvasir-SEG"
    shutil.copytree(Path(kvasir, "Kvasir-SEG", "images"), images_only / "images")
    assert [set(d) for d in kvasir_seg_datalist(tmp_path)] == [{"image", "case"}] * 10  # "auto" without masks/
    with pytest.raises(FileNotFoundError, match=r"mask folder not found: expected '.*Kvasir-SEG/masks'"):
        kvasir_seg_datalist(tmp_path, labels=True)
    with pytest.raises(ValueError, match="labels must be"):
        kvasir_seg_datalist(kvasir, labels="yes")


def test_kvasir_image_without_mask_is_named(kvasir: str, tmp_path: Path) -> None:
    root = tmp_path / "Kvasir-SEG"
    shutil.copytree(Path(kvasir, "Kvasir-SEG"), root)
    victim = sorted((root / "masks").iterdir())[3]
    victim.unlink()
    with pytest.raises(ValueError, match=f"No mask found for image.*{victim.stem}.jpg"):
        kvasir_seg_datalist(tmp_path)


# -------------------------------------------------------------------------------------------- CVC-ClinicDB layout


def test_cvc_tiff_release_sorted_by_frame_number(cvc: str, tmp_path: Path) -> None:
    base = os.path.join(cvc, "CVC-ClinicDB")
    Path(base, "Original", "Thumbs.db").write_bytes(b"junk")  # shipped by Windows-made archives
    datalist = cvc_clinicdb_datalist(cvc)
    assert [d["case"] for d in datalist] == [str(n) for n in range(1, 13)]  # 1, 2, ..., 10, not 1, 10, 11, 2
    assert datalist[9] == {
        "image": os.path.join(base, "Original", "10.tif"),
        "label": os.path.join(base, "Ground Truth", "10.tif"),
        "case": "10",
    }
    assert cvc_clinicdb_datalist(base) == datalist == polyp_datalist(cvc, "auto")
    assert detect_polyp_format(cvc) == "cvc_clinicdb"
    assert all("label" not in d for d in cvc_clinicdb_datalist(cvc, labels=False))


def test_cvc_png_rerelease_and_tif_preferred(tmp_path: Path) -> None:
    png = make_synthetic_cvc_clinicdb(tmp_path / "rerelease", num_cases=3, file_format="png")
    datalist = polyp_datalist(png)
    assert [d["image"] for d in datalist] == [os.path.join(png, "PNG", "Original", f"{n}.png") for n in (1, 2, 3)]
    assert datalist[0]["label"] == os.path.join(png, "PNG", "Ground Truth", "1.png")
    # the re-release ships TIF/ beside PNG/: the original TIFFs are used
    shutil.copytree(Path(png, "PNG"), Path(png, "TIF"))
    for folder in ("Original", "Ground Truth"):
        for f in Path(png, "TIF", folder).iterdir():
            f.rename(f.with_suffix(".tif"))
    assert [d["image"] for d in polyp_datalist(png)] == [
        os.path.join(png, "TIF", "Original", f"{n}.tif") for n in (1, 2, 3)
    ]


def test_cvc_missing_mask_and_missing_folder(cvc: str, tmp_path: Path) -> None:
    root = tmp_path / "CVC-ClinicDB"
    shutil.copytree(Path(cvc, "CVC-ClinicDB"), root)
    (root / "Ground Truth" / "7.tif").unlink()
    with pytest.raises(ValueError, match=r"No mask found for image\(s\) 7.tif.*Ground Truth/7.tif"):
        cvc_clinicdb_datalist(tmp_path)
    shutil.rmtree(root / "Ground Truth")
    assert len(cvc_clinicdb_datalist(tmp_path)) == 12  # "auto": images only
    with pytest.raises(FileNotFoundError, match=r"mask folder not found: expected '.*CVC-ClinicDB/Ground Truth'"):
        cvc_clinicdb_datalist(tmp_path, labels=True)
    with pytest.raises(FileNotFoundError, match="Ground Truth"):
        polyp_train_val_datalists(tmp_path)  # training needs masks


# ------------------------------------------------------------------------------------------------ format selection


def test_neither_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        polyp_datalist(tmp_path)
    text = str(err.value)
    assert "images/" in text and "masks/" in text and "Original/" in text and "Ground Truth/" in text
    assert str(tmp_path) in text and "photos" in text
    with pytest.raises(FileNotFoundError, match="No Kvasir-SEG"):
        polyp_datalist(tmp_path, dataset_format="kvasir_seg")
    with pytest.raises(FileNotFoundError, match="No CVC-ClinicDB"):
        polyp_datalist(tmp_path, dataset_format="cvc_clinicdb")
    with pytest.raises(FileNotFoundError, match="dataset_dir not found"):
        polyp_datalist(tmp_path / "absent")
    with pytest.raises(ValueError, match="kvasir"):
        polyp_datalist(tmp_path, dataset_format="etis")


def test_explicit_format_and_ambiguous_folder(kvasir: str, cvc: str, tmp_path: Path) -> None:
    shutil.copytree(Path(kvasir, "Kvasir-SEG"), tmp_path / "Kvasir-SEG")
    shutil.copytree(Path(cvc, "CVC-ClinicDB"), tmp_path / "CVC-ClinicDB")
    with pytest.raises(ValueError, match="both a Kvasir-SEG and a CVC-ClinicDB"):
        detect_polyp_format(tmp_path)
    assert len(polyp_datalist(tmp_path, dataset_format="kvasir_seg")) == 10
    assert len(polyp_datalist(tmp_path, dataset_format="cvc_clinicdb")) == 12


def test_train_val_holdout(kvasir: str) -> None:
    train, val = polyp_train_val_datalists(kvasir, val_fraction=0.3, seed=0)
    assert (len(train), len(val)) == (7, 3)
    every = polyp_datalist(kvasir)
    assert sorted(train + val, key=lambda d: d["case"]) == every
    assert train == sorted(train, key=lambda d: d["case"]) and not {d["case"] for d in train} & {d["case"] for d in val}
    assert polyp_train_val_datalists(kvasir, val_fraction=0.3, seed=0) == (train, val)
    others = {
        tuple(d["case"] for d in polyp_train_val_datalists(kvasir, val_fraction=0.3, seed=s)[1]) for s in range(5)
    }
    assert len(others) > 1  # the seed matters
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            polyp_train_val_datalists(kvasir, val_fraction=bad)


# ------------------------------------------------------------------------------------------------------ generators


def test_generators_write_mixed_sizes(kvasir: str, cvc: str) -> None:
    for datalist in (polyp_datalist(kvasir), polyp_datalist(cvc)):
        sizes = {Image.open(d["image"]).size for d in datalist}
        assert len(sizes) >= 4
        assert all(Image.open(d["label"]).size == Image.open(d["image"]).size for d in datalist)


def test_kvasir_jpeg_masks_are_lossy_and_threshold_back(kvasir: str) -> None:
    boxes = json.loads(Path(kvasir, "Kvasir-SEG", "kavsir_bboxes.json").read_text())
    load = LoadImage2Dd(["image", "label"], modes=["RGB", "L"])
    binarise = BinaryMaskd("label", threshold=127)
    lossy = 0
    for item in polyp_datalist(kvasir):
        raw = np.asarray(Image.open(item["label"]))
        assert raw.ndim == 3 and raw.shape[2] == 3  # RGB JPEG masks, as released
        lossy += int(len(np.unique(raw)) > 2)
        mask = binarise(load(item))["label"]
        assert mask.shape[0] == 1 and set(torch.unique(mask).tolist()) == {0.0, 1.0}
        xs, ys = np.nonzero(mask[0].numpy())  # (W, H) axis order of MONAI's PIL reader
        box = boxes[item["case"]]["bbox"][0]
        assert abs(xs.min() - box["xmin"]) <= 1 and abs(xs.max() - box["xmax"]) <= 1
        assert abs(ys.min() - box["ymin"]) <= 1 and abs(ys.max() - box["ymax"]) <= 1
        assert (boxes[item["case"]]["height"], boxes[item["case"]]["width"]) == (raw.shape[0], raw.shape[1])
    assert lossy == 10  # every JPEG mask has intermediate values: thresholding is needed


def test_cvc_tiff_read_by_pil_and_loader(tmp_path: Path) -> None:
    root = make_synthetic_cvc_clinicdb(tmp_path, num_cases=2, image_size=(20, 28), seed=5)
    item = polyp_datalist(root)[1]
    image, mask = Image.open(item["image"]), Image.open(item["label"])
    assert (image.format, image.mode, mask.format, mask.mode) == ("TIFF", "RGB", "TIFF", "L")
    pixels = np.asarray(image)
    expected, expected_mask = synthetic_polyp_sample(np.random.default_rng([5, 1001]), pixels.shape[:2])
    np.testing.assert_array_equal(pixels, expected)  # TIFF is lossless
    loaded = BinaryMaskd("label", threshold=127)(LoadImage2Dd(["image", "label"], modes=["RGB", "L"])(item))
    assert loaded["image"].shape == (3, pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(loaded["image"].numpy().transpose(2, 1, 0), expected.astype(np.float32))
    np.testing.assert_array_equal(loaded["label"][0].numpy().T, expected_mask.astype(np.float32))
    # archives re-saved by image tools often hold LZW- or deflate-compressed TIFFs: read the same
    for compression in ("tiff_lzw", "tiff_adobe_deflate"):
        image.save(tmp_path / f"{compression}.tif", compression=compression)
        again = LoadImage2Dd("image", modes="RGB")({"image": str(tmp_path / f"{compression}.tif")})["image"]
        np.testing.assert_array_equal(again.numpy(), loaded["image"].numpy())


def test_synthetic_sample() -> None:
    image, mask = synthetic_polyp_sample(np.random.default_rng(0), (40, 56))
    again, mask_again = synthetic_polyp_sample(np.random.default_rng(0), (40, 56))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8 and mask.shape == (40, 56)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert set(np.unique(mask)) == {0, 1} and 0.03 < mask.mean() < 0.35
    # the polyp is brighter and redder than the mucosa around it: a learnable cue
    assert image[mask == 1, 0].mean() > image[mask == 0, 0].mean()
    with pytest.raises(ValueError, match="image_size"):
        synthetic_polyp_sample(np.random.default_rng(0), (8, 56))
