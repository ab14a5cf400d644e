# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""REFUGE and Drishti-GS1 data lists on synthetic copies of their layouts, and bad layouts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_diffseg.data import (
    drishti_gs_datalist,
    fundus_datalist,
    fundus_layout,
    fundus_train_val_datalists,
    make_synthetic_drishti_gs,
    make_synthetic_refuge,
    refuge_datalist,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "drishti_gs"


@pytest.fixture(scope="module")
def refuge(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_refuge(tmp_path_factory.mktemp("refuge"), num_train=6, num_val=3, num_test=2,
                                 image_size=(48, 56))  # fmt: skip


@pytest.fixture(scope="module")
def drishti(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_drishti_gs(tmp_path_factory.mktemp("drishti"), num_train=5, num_test=2, image_size=(48, 56))


def test_refuge_splits(refuge: str) -> None:
    train = refuge_datalist(refuge, "training")
    assert len(train) == 6 and [d["case"] for d in train] == sorted(d["case"] for d in train)
    for d in train:
        assert os.path.basename(d["image"]) == d["case"] + ".jpg" and os.path.basename(d["label"]) == d["case"] + ".bmp"
        # g* cases sit in Glaucoma/, n* in Non-Glaucoma/
        assert d["glaucoma"] == int(d["case"].startswith("g"))
        assert os.path.basename(os.path.dirname(d["label"])) == os.path.basename(os.path.dirname(d["image"]))
    val = refuge_datalist(refuge, "validation")
    assert [d["case"] for d in val] == ["V0001", "V0002", "V0003"] and all("glaucoma" not in d for d in val)
    test = refuge_datalist(refuge, "test")
    assert [d["case"] for d in test] == ["T0001", "T0002"]
    assert all(os.path.basename(os.path.dirname(d["label"])) == ("G" if d["glaucoma"] else "N") for d in test)
    # the official validation split is used when present
    tr, va = fundus_train_val_datalists(refuge)
    assert len(tr) == 6 and [d["case"] for d in va] == ["V0001", "V0002", "V0003"]


def test_refuge_nested_zip_folders_and_images_only(refuge: str, tmp_path: Path) -> None:
    # some mirrors unpack REFUGE-Validation400.zip into REFUGE-Validation400/REFUGE-Validation400/
    root = tmp_path / "r"
    shutil.copytree(refuge, root / "REFUGE")
    assert len(refuge_datalist(root, "validation")) == 3
    shutil.rmtree(root / "REFUGE" / "REFUGE-Test-GT")
    items = refuge_datalist(root, "test")  # labels="auto": images only
    assert [set(d) for d in items] == [{"image", "case"}] * 2
    with pytest.raises(FileNotFoundError, match="REFUGE-Test-GT/Disc_Cup_Masks"):
        refuge_datalist(root, "test", labels=True)


def test_refuge_bad_layouts(refuge: str, tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(refuge, root)
    mask = next((root / "REFUGE-Validation400-GT" / "Disc_Cup_Masks").glob("V0002.bmp"))
    mask.unlink()
    with pytest.raises(ValueError, match=r"No mask found for image\(s\) V0002.jpg"):
        refuge_datalist(root, "validation")
    # a holdout from training when the official validation split is unusable is not silent: it raises
    with pytest.raises(ValueError, match="V0002"):
        fundus_train_val_datalists(root)
    shutil.rmtree(root / "Test400")
    with pytest.raises(FileNotFoundError, match="Test400"):
        refuge_datalist(root, "test")
    with pytest.raises(ValueError, match="did you mean 'training'"):
        refuge_datalist(root, "train400")


def test_drishti_official_layout(drishti: str) -> None:
    train = drishti_gs_datalist(drishti, "training", expert_threshold=3)
    assert [d["case"] for d in train] == [f"drishtiGS_{2 * i + 2:03d}" for i in range(5)]
    d = train[0]
    assert d["label"].endswith(f"GT/{d['case']}/SoftMap/{d['case']}_ODsegSoftmap.png")
    assert d["label_cup"].endswith(f"GT/{d['case']}/SoftMap/{d['case']}_cupsegSoftmap.png")
    assert d["expert_threshold"] == 3
    test = drishti_gs_datalist(drishti, "test")
    assert len(test) == 2 and "Test_GT" in test[0]["label"]
    # the folder above Drishti-GS1_files and the folder itself both work
    assert drishti_gs_datalist(os.path.join(drishti, "Drishti-GS1_files")) == drishti_gs_datalist(drishti)
    # no official validation split: a seeded holdout, disjoint, reproducible
    tr, va = fundus_train_val_datalists(drishti, val_fraction=0.4, seed=1)
    assert len(tr) == 3 and len(va) == 2 and not {x["case"] for x in tr} & {x["case"] for x in va}
    assert (tr, va) == fundus_train_val_datalists(drishti, val_fraction=0.4, seed=1)
    assert fundus_layout(drishti) == "drishti_gs" and fundus_datalist(drishti, "test") == test


def test_drishti_bad_layouts(drishti: str, tmp_path: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(drishti, root)
    soft = (
        root / "Drishti-GS1_files" / "Training" / "GT" / "drishtiGS_004" / "SoftMap" / "drishtiGS_004_cupsegSoftmap.png"
    )
    soft.unlink()
    with pytest.raises(ValueError, match=r"drishtiGS_004.png.*drishtiGS_004_cupsegSoftmap.png"):
        drishti_gs_datalist(root)
    for bad in (0, 5, 2.5, True):
        with pytest.raises(ValueError, match="expert_threshold"):
            drishti_gs_datalist(root, expert_threshold=bad)
    (tmp_path / "empty" / "photos").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No REFUGE .* or Drishti-GS1 .* contains: photos"):
        fundus_layout(tmp_path / "empty")


def test_drishti_flat_layout(tmp_path: Path) -> None:
    root = make_synthetic_drishti_gs(tmp_path / "flat", num_train=4, image_size=(40, 48), layout="flat")
    items = drishti_gs_datalist(root, split="test")  # one set, listed whatever the split
    assert [d["case"] for d in items] == ["drishtiGS_002", "drishtiGS_004", "drishtiGS_006", "drishtiGS_008"]
    assert all(d["label"].endswith(f"disc/{d['case']}.png") and d["label_cup"].endswith(f"cup/{d['case']}.png")
               for d in items)  # fmt: skip
    levels = set(np.unique(np.asarray(Image.open(items[0]["label"]))).tolist())
    assert levels <= {0, 64, 128, 191, 255} and {0, 255} <= levels
    os.remove(os.path.join(root, "cup", "drishtiGS_006.png"))
    with pytest.raises(ValueError, match="drishtiGS_006"):
        drishti_gs_datalist(root)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/drishti_gs not available")
def test_shared_drishti_copy() -> None:
    items = drishti_gs_datalist(SHARED)
    assert len(items) == 50 and all(os.path.isfile(d["label_cup"]) for d in items)
    train, val = fundus_train_val_datalists(SHARED)
    assert (len(train), len(val)) == (40, 10)
