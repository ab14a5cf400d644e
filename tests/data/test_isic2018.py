# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for the ISIC 2018 / image-folder data-list builders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from monai_diffseg.data import (
    ISIC2018_SPLIT_FOLDERS,
    image_folder_datalist,
    isic2018_datalist,
    isic2018_train_val_datalists,
    make_synthetic_isic2018,
    split_datalist,
)

TRAIN_IN, TRAIN_GT = ISIC2018_SPLIT_FOLDERS["training"]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_isic2018(tmp_path_factory.mktemp("isic"), 6, 2, 2, image_size=(32, 48), seed=0)


@pytest.fixture(scope="module")
def synth_no_val(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_isic2018(tmp_path_factory.mktemp("isic_noval"), 10, 0, 0, image_size=(32, 48), seed=1)


def test_training_pairs_sorted_and_ignores_non_images(synth_root: str) -> None:
    dl = isic2018_datalist(synth_root, "training")
    assert [d["case"] for d in dl] == [f"ISIC_{i:07d}" for i in range(6)]
    for d in dl:
        assert set(d) == {"image", "label", "case"}
        assert os.path.isabs(d["image"]) and os.path.isabs(d["label"])
        assert os.path.isfile(d["image"]) and os.path.isfile(d["label"])
        assert os.path.basename(d["image"]) == d["case"] + ".jpg"
        assert os.path.basename(d["label"]) == d["case"] + "_segmentation.png"
        assert os.path.basename(os.path.dirname(d["image"])) == TRAIN_IN
        assert os.path.basename(os.path.dirname(d["label"])) == TRAIN_GT
    # The synthetic writer puts LICENSE.txt / ATTRIBUTION.txt next to the images.
    assert os.path.isfile(os.path.join(synth_root, TRAIN_IN, "LICENSE.txt"))


def test_all_splits_disjoint(synth_root: str) -> None:
    splits = {s: isic2018_datalist(synth_root, s, labels=True) for s in ("training", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"training": 6, "validation": 2, "test": 2}
    cases = [d["case"] for v in splits.values() for d in v]
    assert len(cases) == len(set(cases))


def test_labels_false_and_auto(synth_root: str, tmp_path: Path) -> None:
    images_only = isic2018_datalist(synth_root, "validation", labels=False)
    assert [set(d) for d in images_only] == [{"image", "case"}] * 2
    assert all("label" in d for d in isic2018_datalist(synth_root, "validation", labels="auto"))

    # Without a ground-truth folder, "auto" lists images only and True refuses.
    _touch(tmp_path / ISIC2018_SPLIT_FOLDERS["test"][0] / "ISIC_0000009.jpg")
    assert isic2018_datalist(tmp_path, "test") == [
        {"image": str(tmp_path / ISIC2018_SPLIT_FOLDERS["test"][0] / "ISIC_0000009.jpg"), "case": "ISIC_0000009"}
    ]
    with pytest.raises(FileNotFoundError, match=ISIC2018_SPLIT_FOLDERS["test"][1]):
        isic2018_datalist(tmp_path, "test", labels=True)


def test_extensions_and_ignored_files(tmp_path: Path) -> None:
    inp, gt = tmp_path / TRAIN_IN, tmp_path / TRAIN_GT
    for name in ("ISIC_0000002.JPG", "ISIC_0000001.jpeg", "ISIC_0000000.png", "LICENSE.txt", "ATTRIBUTION.txt",
                 "ISIC_0000003_superpixels.png", "._ISIC_0000004.jpg", "notes.jpg"):  # fmt: skip
        _touch(inp / name)
    for i in range(3):
        _touch(gt / f"ISIC_{i:07d}_segmentation.png")
    _touch(gt / "LICENSE.txt")
    dl = isic2018_datalist(tmp_path, "training")
    assert [os.path.basename(d["image"]) for d in dl] == ["ISIC_0000000.png", "ISIC_0000001.jpeg", "ISIC_0000002.JPG"]


def test_bad_split_and_missing_dirs(synth_root: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training"):
        isic2018_datalist(synth_root, "train")
    with pytest.raises(ValueError, match="labels"):
        isic2018_datalist(synth_root, "training", labels="yes")  # type: ignore[arg-type]
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        isic2018_datalist(missing)
    (tmp_path / "some_other_folder").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        isic2018_datalist(tmp_path, "validation")
    assert ISIC2018_SPLIT_FOLDERS["validation"][0] in str(err.value)
    assert "some_other_folder" in str(err.value)  # lists what is there


def test_input_folder_without_images(tmp_path: Path) -> None:
    _touch(tmp_path / TRAIN_IN / "LICENSE.txt")
    with pytest.raises(ValueError, match=TRAIN_IN):
        isic2018_datalist(tmp_path, "training")


def test_image_without_mask(tmp_path: Path) -> None:
    for i in range(8):
        _touch(tmp_path / TRAIN_IN / f"ISIC_{i:07d}.jpg")
    _touch(tmp_path / TRAIN_GT / "ISIC_0000000_segmentation.png")
    with pytest.raises(ValueError) as err:
        isic2018_datalist(tmp_path, "training", labels=True)
    msg = str(err.value)
    assert "ISIC_0000001.jpg" in msg
    assert os.path.join(str(tmp_path), TRAIN_GT, "ISIC_0000001_segmentation.png") in msg
    assert "7 in total" in msg
    assert "ISIC_0000007.jpg" not in msg  # only the first few are named
    # labels=False never looks at masks.
    assert len(isic2018_datalist(tmp_path, "training", labels=False)) == 8


def test_orphan_mask_warns_and_duplicate_case_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _touch(tmp_path / TRAIN_IN / "ISIC_0000000.jpg")
    _touch(tmp_path / TRAIN_GT / "ISIC_0000000_segmentation.png")
    _touch(tmp_path / TRAIN_GT / "ISIC_0000042_segmentation.png")
    with caplog.at_level(logging.WARNING, logger="monai_diffseg.data.isic2018"):
        assert len(isic2018_datalist(tmp_path)) == 1
    assert "ISIC_0000042_segmentation.png" in caplog.text
    _touch(tmp_path / TRAIN_IN / "ISIC_0000000.png")
    with pytest.raises(ValueError, match="ISIC_0000000"):
        isic2018_datalist(tmp_path)


def test_train_val_uses_official_validation(synth_root: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="monai_diffseg.data.isic2018"):
        train, val = isic2018_train_val_datalists(synth_root)
    assert train == isic2018_datalist(synth_root, "training")
    assert val == isic2018_datalist(synth_root, "validation")
    assert "official validation" in caplog.text


def test_train_val_holdout(synth_no_val: str, caplog: pytest.LogCaptureFixture) -> None:
    full = isic2018_datalist(synth_no_val, "training")
    with caplog.at_level(logging.INFO, logger="monai_diffseg.data.isic2018"):
        train, val = isic2018_train_val_datalists(synth_no_val, val_fraction=0.1, seed=3)
    assert "holdout" in caplog.text
    assert len(val) == 1 and len(train) == 9
    assert isic2018_train_val_datalists(synth_no_val, val_fraction=0.1, seed=3) == (train, val)
    assert sorted([d["case"] for d in train + val]) == [d["case"] for d in full]
    assert [d["case"] for d in train] == sorted(d["case"] for d in train)

    train, val = isic2018_train_val_datalists(synth_no_val, val_fraction=0.3, seed=0)
    assert len(val) == 3 and not {d["case"] for d in train} & {d["case"] for d in val}
    picks = {tuple(d["case"] for d in isic2018_train_val_datalists(synth_no_val, 0.3, seed=s)[1]) for s in range(5)}
    assert len(picks) > 1  # the seed matters
    with pytest.raises(ValueError, match="val_fraction"):
        isic2018_train_val_datalists(synth_no_val, val_fraction=1.0)


def test_split_datalist() -> None:
    items = [{"image": f"/x/{i}.png", "case": str(i)} for i in range(10)]
    parts = split_datalist(items, (0.7, 0.1, 0.2), seed=5)
    assert [len(p) for p in parts] == [7, 1, 2]
    cases = [d["case"] for p in parts for d in p]
    assert sorted(cases, key=int) == [str(i) for i in range(10)]
    for p in parts:
        assert [int(d["case"]) for d in p] == sorted(int(d["case"]) for d in p)
    assert split_datalist(items, (0.7, 0.1, 0.2), seed=5) == parts
    assert split_datalist(items, (0.7, 0.1, 0.2), seed=6) != parts
    assert [len(p) for p in split_datalist(items[:3], (0.8, 0.1, 0.1))] == [1, 1, 1]
    assert [len(p) for p in split_datalist(items, (0.5, 0.0, 0.5))] == [5, 0, 5]
    with pytest.raises(ValueError, match="sum to 1"):
        split_datalist(items, (0.5, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        split_datalist(items, (1.2, -0.2))
    with pytest.raises(ValueError, match="2 item"):
        split_datalist(items[:2], (0.5, 0.25, 0.25))


def test_split_datalist_keeps_the_published_splits() -> None:
    """The cases of the PH2-sized seed-0 split that docs/results.md was measured on (150 items, 0.7/0.1/0.2)."""
    items = [{"case": str(i)} for i in range(150)]
    _, val, test = split_datalist(items, (0.7, 0.1, 0.2), seed=0)
    assert [int(d["case"]) for d in val] == [26, 40, 41, 45, 49, 51, 62, 63, 86, 96, 101, 112, 128, 135, 146]
    assert [int(d["case"]) for d in test] == [
        7, 12, 14, 29, 31, 32, 33, 46, 56, 58, 59, 61, 69, 73, 76,
        77, 78, 79, 89, 95, 104, 113, 115, 120, 121, 127, 138, 141, 143, 149,
    ]  # fmt: skip


def test_image_folder_datalist_kvasir_and_ph2(tmp_path: Path) -> None:
    # Kvasir-SEG: images/<id>.jpg + masks/<id>.jpg
    for case in ("cju1", "cju0"):
        _touch(tmp_path / "kvasir" / "images" / f"{case}.jpg")
        _touch(tmp_path / "kvasir" / "masks" / f"{case}.jpg")
    _touch(tmp_path / "kvasir" / "images" / "readme.txt")
    dl = image_folder_datalist(tmp_path / "kvasir" / "images", tmp_path / "kvasir" / "masks")
    assert [d["case"] for d in dl] == ["cju0", "cju1"]
    assert dl[0]["label"] == str(tmp_path / "kvasir" / "masks" / "cju0.jpg")

    # PH2-like: images/<id>.BMP + masks/<id>_lesion.png (other extension, suffix)
    _touch(tmp_path / "ph2" / "images" / "IMD002.BMP")
    _touch(tmp_path / "ph2" / "masks" / "IMD002_lesion.png")
    dl = image_folder_datalist(tmp_path / "ph2" / "images", tmp_path / "ph2" / "masks", "_lesion", image_exts=(".bmp",))
    assert dl == [{"image": str(tmp_path / "ph2" / "images" / "IMD002.BMP"),
                   "label": str(tmp_path / "ph2" / "masks" / "IMD002_lesion.png"), "case": "IMD002"}]  # fmt: skip
    assert image_folder_datalist(tmp_path / "ph2" / "images", None, image_exts=(".bmp",))[0].keys() == {"image", "case"}

    _touch(tmp_path / "ph2" / "images" / "IMD003.bmp")
    with pytest.raises(ValueError, match="IMD003.bmp"):
        image_folder_datalist(tmp_path / "ph2" / "images", tmp_path / "ph2" / "masks", "_lesion", image_exts=(".bmp",))
    with pytest.raises(FileNotFoundError, match="no_masks"):
        image_folder_datalist(tmp_path / "kvasir" / "images", tmp_path / "no_masks")
    with pytest.raises(ValueError, match="No images"):
        image_folder_datalist(tmp_path / "ph2" / "masks", None, image_exts=(".jpg",))


_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.realdata
@pytest.mark.skipif(not (_SHARED / "ph2").is_dir() or not (_SHARED / "kvasir_seg").is_dir(), reason="no ../shared/data")
def test_image_folder_datalist_real_data() -> None:
    ph2 = image_folder_datalist(_SHARED / "ph2" / "images", _SHARED / "ph2" / "masks")
    kvasir = image_folder_datalist(_SHARED / "kvasir_seg" / "images", _SHARED / "kvasir_seg" / "masks")
    assert len(ph2) >= 100 and len(kvasir) >= 900
    for dl in (ph2, kvasir):
        assert all(os.path.splitext(os.path.basename(d["label"]))[0] == d["case"] for d in dl)
    train, val, test = split_datalist(ph2, (0.7, 0.1, 0.2), seed=0)
    assert len(train) + len(val) + len(test) == len(ph2) and len(val) > 0 and len(test) > 0
