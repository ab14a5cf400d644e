# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Multi-rater data lists: case folders (rater<k>, QUBIQ task<TT>_seg<KK>) and LIDC-IDRI crops, incl. bad layouts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from monai_diffseg.data import (
    case_folder_datalist,
    lidc_crops_datalist,
    make_synthetic_case_folders,
    make_synthetic_lidc_crops,
    multirater_datalist,
    multirater_train_val_datalists,
)


@pytest.fixture()
def cases(tmp_path: Path) -> str:
    return make_synthetic_case_folders(tmp_path / "q", num_cases=5, num_raters=3, image_size=(8, 8), seed=0)


@pytest.fixture()
def lidc(tmp_path: Path) -> str:
    return make_synthetic_lidc_crops(tmp_path / "lidc", {"train": 2, "val": 1, "test": 1}, image_size=(8, 8))


def test_case_folders_items_sorted_with_ordered_raters(cases: str) -> None:
    Path(cases, "case01", "rater10.png").write_bytes(Path(cases, "case01", "rater1.png").read_bytes())
    os.makedirs(os.path.join(cases, "__MACOSX"))  # ignored: no image, no masks
    Path(cases, ".DS_Store").write_text("")
    with pytest.raises(ValueError, match=r"case 'case01'.*gives 4.*case 'case02'.*has 3"):
        case_folder_datalist(cases)
    os.remove(os.path.join(cases, "case01", "rater10.png"))
    dl = case_folder_datalist(cases)
    assert [d["case"] for d in dl] == [f"case{i:02d}" for i in range(1, 6)]
    assert [os.path.basename(p) for p in dl[0]["raters"]] == ["rater1.png", "rater2.png", "rater3.png"]
    assert dl[0]["image"] == os.path.join(cases, "case01", "image.png") and os.path.isabs(dl[0]["image"])
    assert case_folder_datalist(cases, labels=False)[0] == {"image": dl[0]["image"], "case": "case01"}
    with pytest.raises(ValueError, match="num_raters=4 gives 4"):
        case_folder_datalist(cases, num_raters=4)


def test_rater_numbers_sort_numerically(tmp_path: Path) -> None:
    root = make_synthetic_case_folders(tmp_path, num_cases=1, num_raters=11, image_size=(4, 4))
    names = [os.path.basename(p) for p in case_folder_datalist(root)[0]["raters"]]
    assert names == [f"rater{k}.png" for k in range(1, 12)]


def test_qubiq_release_naming_and_task_choice(tmp_path: Path) -> None:
    root = make_synthetic_case_folders(tmp_path, num_cases=2, num_raters=3, image_size=(4, 4), naming="qubiq")
    dl = case_folder_datalist(root)
    assert [os.path.basename(p) for p in dl[1]["raters"]] == [
        "task01_seg01.png",
        "task01_seg02.png",
        "task01_seg03.png",
    ]
    for case in ("case01", "case02"):  # a second task (e.g. QUBIQ prostate) makes the choice explicit
        shutil.copy(os.path.join(root, case, "task01_seg01.png"), os.path.join(root, case, "task02_seg01.png"))
    with pytest.raises(ValueError, match=r"several tasks \[1, 2\].*task="):
        case_folder_datalist(root)
    assert [len(d["raters"]) for d in case_folder_datalist(root, task=2)] == [1, 1]
    with pytest.raises(ValueError, match="no task03_seg"):
        case_folder_datalist(root, task=3)


def test_bad_case_folders_are_clear_errors(cases: str, tmp_path: Path) -> None:
    os.remove(os.path.join(cases, "case03", "image.png"))
    with pytest.raises(ValueError, match=r"case03' has no image; expected exactly one 'image.<ext>'"):
        case_folder_datalist(cases)
    with pytest.raises(FileNotFoundError, match="nope"):
        case_folder_datalist(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="No case folders with an 'image.<ext>'"):
        case_folder_datalist(tmp_path / "empty")


def test_case_without_raters_needs_labels_false(cases: str) -> None:
    for k in (1, 2, 3):
        os.remove(os.path.join(cases, "case02", f"rater{k}.png"))
    with pytest.raises(ValueError, match="case02.*no rater masks"):
        case_folder_datalist(cases)
    assert len(case_folder_datalist(cases, labels=False)) == 5


def test_lidc_crops_released_splits(lidc: str) -> None:
    train = lidc_crops_datalist(lidc, "train")
    assert [d["case"] for d in train] == [
        "LIDC-IDRI-0001_z-105.0_c0",
        "LIDC-IDRI-0001_z-107.5_c0",
        "LIDC-IDRI-0002_z-105.0_c0",
        "LIDC-IDRI-0002_z-107.5_c0",
    ]
    assert [os.path.basename(p) for p in train[0]["raters"]] == [f"z-105.0_c0_l{k}.png" for k in range(4)]
    assert train[0]["patient"] == "LIDC-IDRI-0001"
    tr, va = multirater_train_val_datalists(lidc)
    assert tr == train and {d["patient"] for d in va} == {"LIDC-IDRI-0003"}
    assert [d["patient"] for d in multirater_datalist(lidc, split="test")] == ["LIDC-IDRI-0004"] * 2


def test_lidc_crop_with_a_missing_grader_is_named(lidc: str) -> None:
    os.remove(os.path.join(lidc, "val", "gt", "LIDC-IDRI-0003", "z-107.5_c0_l2.png"))
    with pytest.raises(ValueError, match=r"LIDC-IDRI-0003/z-107.5_c0 \(has l\[0, 1, 3\]\)"):
        lidc_crops_datalist(lidc, "val")
    assert len(lidc_crops_datalist(lidc, "val", labels=False)) == 2
    shutil.rmtree(os.path.join(lidc, "test", "gt"))
    assert "raters" not in multirater_datalist(lidc, split="test")[0]
    with pytest.raises(FileNotFoundError, match="gt folder"):
        lidc_crops_datalist(lidc, "test", labels=True)


def test_case_folder_holdout_is_seeded_and_disjoint(cases: str) -> None:
    a = multirater_train_val_datalists(cases, val_fraction=0.4, seed=3)
    b = multirater_train_val_datalists(cases, val_fraction=0.4, seed=3)
    assert a == b and len(a[1]) == 2 and len(a[0]) == 3
    assert not {d["case"] for d in a[0]} & {d["case"] for d in a[1]}
    assert multirater_datalist(cases) == case_folder_datalist(cases)


def test_case_folder_splits_for_inference_match_training(cases: str) -> None:
    train, val = multirater_train_val_datalists(cases, val_fraction=0.4, seed=1)
    assert multirater_datalist(cases, split="val", val_fraction=0.4, seed=1) == val
    assert multirater_datalist(cases, split="train", val_fraction=0.4, seed=1) == train
    assert len(multirater_datalist(cases, split="test")) == 5
