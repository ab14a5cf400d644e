# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""BraTS data lists (2018-2021 and 2023 layouts), their errors, the seeded split and the synthetic generator."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_diffseg.data import (
    brats_datalist,
    brats_output_name,
    detect_brats_format,
    make_synthetic_brats,
    synthetic_brats_sample,
)


@pytest.fixture(scope="module")
def brats18(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_brats(tmp_path_factory.mktemp("b18"), "brats2018", num_cases=5, shape=(16, 18, 20), seed=1)


@pytest.fixture(scope="module")
def brats23(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_brats(tmp_path_factory.mktemp("b23"), "brats2023", num_cases=3, shape=(16, 16, 16), seed=2)


def test_layouts_and_channel_order(brats18: str, brats23: str) -> None:
    assert detect_brats_format(brats18) == "brats2018" and detect_brats_format(brats23) == "brats2023"
    items = brats_datalist(brats18)
    assert [i["case"] for i in items] == [f"Brats18_Synth_{k}_1" for k in range(5)]
    case = items[2]["case"]
    assert [os.path.basename(f) for f in items[2]["image"]] == [
        f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")
    ]
    assert items[2]["label"] == os.path.join(brats18, case, f"{case}_seg.nii.gz")
    items = brats_datalist(brats23, dataset_format="brats2023")
    assert [os.path.basename(f) for f in items[0]["image"]] == [
        f"BraTS-GLI-00000-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")
    ]
    assert not brats_datalist(brats23, labels=False)[0].keys() & {"label"}


def test_nested_release_folders(brats18: str, tmp_path: Path) -> None:
    """The 2018 training release nests the cases in HGG/ and LGG/."""
    root = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    for k, case in enumerate(sorted(p for p in Path(brats18).iterdir() if p.is_dir())):
        grade = root / ("HGG" if k % 2 else "LGG")
        grade.mkdir(parents=True, exist_ok=True)
        (grade / case.name).symlink_to(case)
    (root / "survival_data.csv").write_text("id\n")
    assert [i["case"] for i in brats_datalist(tmp_path)] == [i["case"] for i in brats_datalist(brats18)]
    single = brats_datalist(root / "HGG" / "Brats18_Synth_1_1")  # one case folder
    assert [i["case"] for i in single] == ["Brats18_Synth_1_1"] and len(single[0]["image"]) == 4


def _copy_cases(src: str, dst: Path) -> Path:
    for case in sorted(p for p in Path(src).iterdir() if p.is_dir()):
        (dst / case.name).mkdir(parents=True)
        for f in case.iterdir():
            (dst / case.name / f.name).symlink_to(f)
    return dst


def test_missing_modality_names_the_case(brats18: str, tmp_path: Path) -> None:
    root = _copy_cases(brats18, tmp_path / "d")
    (root / "Brats18_Synth_3_1" / "Brats18_Synth_3_1_t1ce.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"'Brats18_Synth_3_1' lacks Brats18_Synth_3_1_t1ce\.nii\.gz"):
        brats_datalist(root)


def test_missing_seg_names_the_case(brats18: str, tmp_path: Path) -> None:
    root = _copy_cases(brats18, tmp_path / "d")
    (root / "Brats18_Synth_1_1" / "Brats18_Synth_1_1_seg.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"No segmentation .* Brats18_Synth_1_1 .*labels=False"):
        brats_datalist(root)
    assert len(brats_datalist(root, labels=False)) == 5  # images only is fine


def test_unlabelled_release_and_errors(tmp_path: Path, brats18: str, brats23: str) -> None:
    val = make_synthetic_brats(tmp_path / "val", "brats2018", num_cases=2, shape=(16, 16, 16), labels=False)
    assert all("label" not in i for i in brats_datalist(val))  # "auto": a validation release
    with pytest.raises(ValueError, match="No segmentation"):
        brats_datalist(val, labels=True)
    with pytest.raises(
        FileNotFoundError, match=r"No brats2023 .*-\{t1n.*2 brats2018 case folder.*dataset_format='brats2018'"
    ):
        brats_datalist(val, dataset_format="brats2023")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No BraTS case folders"):
        detect_brats_format(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    _copy_cases(brats18, mixed / "a")
    _copy_cases(brats23, mixed / "b")
    with pytest.raises(ValueError, match="mixes BraTS layouts"):
        brats_datalist(mixed)


def test_seeded_split(brats18: str) -> None:
    kw = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 3}
    parts = [brats_datalist(brats18, split=s, **kw) for s in ("train", "val", "test")]
    cases = [{i["case"] for i in p} for p in parts]
    assert [len(c) for c in cases] == [3, 1, 1]
    assert set.union(*cases) == {i["case"] for i in brats_datalist(brats18)} and sum(map(len, cases)) == 5
    assert parts == [brats_datalist(brats18, split=s, **kw) for s in ("train", "val", "test")]  # same seed, same parts
    assert len(brats_datalist(brats18, split="val", val_fraction=0.2)) == 1
    assert brats_datalist(brats18, split="test", val_fraction=0.2) == []  # no test part asked for
    with pytest.raises(ValueError, match="sum below 1"):
        brats_datalist(brats18, split="train", val_fraction=0.5, test_fraction=0.5)


def test_synthetic_volumes(brats23: str) -> None:
    rng = np.random.default_rng(0)
    image, seg = synthetic_brats_sample(rng, (20, 18, 16), et_label=3)
    assert image.shape == (4, 20, 18, 16) and image.dtype == np.int16
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    brain = image[0] > 0
    assert np.all(seg[~brain] == 0) and np.all(image[:, ~brain] == 0)
    assert image[3].max() == 32767 and np.count_nonzero(image[3] == 32767) == 1  # the saturated FLAIR voxel
    enhancing, oedema = seg == 3, seg == 2
    assert image[1][enhancing].mean() > 1.5 * image[1][oedema].mean()  # the rim enhances on T1-Gd
    # written with a non-identity affine, the same for every file of a case
    item = brats_datalist(brats23)[1]
    affines = [nib.load(f).affine for f in [*item["image"], item["label"]]]
    assert not np.allclose(affines[0], np.eye(4)) and all(np.array_equal(a, affines[0]) for a in affines)
    assert np.array_equal(np.diag(affines[0])[:3], [-1, -1, 1])
    with pytest.raises(ValueError, match="three integers"):
        synthetic_brats_sample(rng, (8, 32, 32))


def test_output_name_formatter() -> None:
    for src, case in (
        ("/d/Brats18_2013_11_1/Brats18_2013_11_1_t1.nii.gz", "Brats18_2013_11_1"),
        ("/d/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000"),
        ("/d/BraTS2021_00000/BraTS2021_00000_flair.nii", "BraTS2021_00000"),
    ):
        name = brats_output_name({"filename_or_obj": src}, None)["subject"]
        assert name == os.path.join(os.path.dirname(src), case + ".nii.gz")
    assert brats_output_name({"filename_or_obj": "/d/volume.nii.gz"}, None)["subject"] == "/d/volume.nii.gz"
