# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for the synthetic ISIC 2018-style dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import EnsureChannelFirstd, LoadImaged
from PIL import Image
from scipy import ndimage

from monai_diffseg.data import (
    ISIC2018_SPLIT_FOLDERS,
    isic2018_datalist,
    make_synthetic_isic2018,
    synthetic_lesion_sample,
)
from monai_diffseg.data.synthetic import main


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for folder in sorted(os.listdir(root)):
        if os.path.isdir(os.path.join(root, folder)):
            for name in sorted(os.listdir(os.path.join(root, folder))):
                out[f"{folder}/{name}"] = Path(root, folder, name).read_bytes()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_isic2018(tmp_path_factory.mktemp("synth"), 6, 2, 2, image_size=(32, 48), seed=0)


def test_layout_and_file_formats(small: str) -> None:
    counts = {"training": 6, "validation": 2, "test": 2}
    for split, (inp, gt) in ISIC2018_SPLIT_FOLDERS.items():
        names = sorted(os.listdir(os.path.join(small, inp)))
        assert "LICENSE.txt" in names
        jpgs = [n for n in names if n.endswith(".jpg")]
        pngs = [n for n in os.listdir(os.path.join(small, gt)) if n.endswith("_segmentation.png")]
        assert len(jpgs) == len(pngs) == counts[split]
        for n in jpgs:
            assert len(n) == len("ISIC_0000000.jpg")
            with Image.open(os.path.join(small, inp, n)) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (48, 32))
            with Image.open(os.path.join(small, gt, n[:-4] + "_segmentation.png")) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "L", (48, 32))
                assert set(np.unique(np.asarray(im)).tolist()) == {0, 255}


def test_builder_and_monai_loading(small: str) -> None:
    item = isic2018_datalist(small, "test")[0]
    loaded = EnsureChannelFirstd(keys=["image", "label"])(LoadImaged(keys=["image", "label"], reader="PILReader")(item))
    # PILReader reverses PIL's (H, W) into (W, H).
    assert tuple(loaded["image"].shape) == (3, 48, 32)
    assert tuple(loaded["label"].shape) == (1, 48, 32)


@pytest.mark.parametrize("size", [(32, 48), (96, 128), (64, 64)])
def test_lesion_properties(size: tuple[int, int]) -> None:
    for seed in range(4):
        for idx in range(10):
            image, mask = synthetic_lesion_sample(np.random.default_rng([seed, idx]), size)
            assert image.shape == (*size, 3) and image.dtype == np.uint8
            assert mask.shape == size and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) == {0, 1}
            assert 0.03 <= mask.mean() <= 0.5
            assert ndimage.label(mask)[1] == 1  # one blob
            lum = image.astype(float).mean(-1)
            assert lum[mask == 1].mean() < lum[mask == 0].mean()  # lesions are darker than skin
            assert image[..., 0].mean() > image[..., 2].mean()  # skin/brown tones, not blue
    fracs = [synthetic_lesion_sample(np.random.default_rng([9, i]), (32, 48))[1].mean() for i in range(40)]
    assert min(fracs) < 0.08 and max(fracs) > 0.25  # sizes really vary


def test_sample_has_hairs_and_vignetting() -> None:
    rng = np.random.default_rng(0)
    dark_outside, corner_darker = 0, 0
    for _ in range(10):
        image, mask = synthetic_lesion_sample(rng, (96, 128))
        lum = image.astype(float).mean(-1)
        skin = np.median(lum[mask == 0])
        dark_outside += bool(np.any(lum[mask == 0] < 0.5 * skin))  # hair pixels crossing the skin
        corner_darker += lum[:8, :8].mean() < lum[40:56, 4:12].mean()
    assert dark_outside >= 8 and corner_darker >= 8


def test_determinism_and_seed_dependence(tmp_path: Path) -> None:
    a = make_synthetic_isic2018(tmp_path / "a", 3, 1, 1, image_size=(32, 48), seed=7)
    b = make_synthetic_isic2018(tmp_path / "b", 3, 1, 1, image_size=(32, 48), seed=7)
    c = make_synthetic_isic2018(tmp_path / "c", 3, 1, 1, image_size=(32, 48), seed=8)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    jpgs = [k for k in fa if k.endswith(".jpg")]
    assert all(fa[k] != fc[k] for k in jpgs)
    im1, m1 = synthetic_lesion_sample(np.random.default_rng(3), (32, 48))
    im2, m2 = synthetic_lesion_sample(np.random.default_rng(3), (32, 48))
    assert np.array_equal(im1, im2) and np.array_equal(m1, m2)


def test_reuse_overwrite_and_zero_splits(tmp_path: Path) -> None:
    root = make_synthetic_isic2018(tmp_path, 2, 0, 1, image_size=(16, 16))
    assert not os.path.exists(os.path.join(root, ISIC2018_SPLIT_FOLDERS["validation"][0]))
    probe = os.path.join(root, ISIC2018_SPLIT_FOLDERS["training"][0], "ISIC_0000000.jpg")
    os.utime(probe, (0, 0))
    assert make_synthetic_isic2018(tmp_path, 2, 0, 1, image_size=(16, 16)) == root  # reused as is
    assert os.path.getmtime(probe) == 0
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_synthetic_isic2018(tmp_path, 3, 0, 1, image_size=(16, 16))
    make_synthetic_isic2018(tmp_path, 3, 1, 0, image_size=(16, 16), overwrite=True)
    assert os.path.getmtime(probe) > 0
    assert len(isic2018_datalist(root, "training")) == 3
    assert not os.path.exists(os.path.join(root, ISIC2018_SPLIT_FOLDERS["test"][0]))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_isic2018(tmp_path, image_size=(8, 8))
    with pytest.raises(ValueError, match="image_size"):
        synthetic_lesion_sample(np.random.default_rng(0), (32,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="training"):
        make_synthetic_isic2018(tmp_path, num_train=0)
    with pytest.raises(ValueError, match="validation"):
        make_synthetic_isic2018(tmp_path, num_val=-1)


def test_default_size_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    root = make_synthetic_isic2018(tmp_path, 48, 8, 8, image_size=(96, 128))
    assert time.perf_counter() - start < 10.0
    assert len(isic2018_datalist(root, "training")) == 48


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = main(["--output_dir", str(tmp_path / "cli"), "--num_train", "2", "--num_val", "1", "--num_test", "0",
                "--image_size", "24", "40", "--seed", "3"])  # fmt: skip
    assert capsys.readouterr().out.strip() == out == str(tmp_path / "cli")
    assert len(isic2018_datalist(out, "validation")) == 1
    # Also as a module, with warnings as errors (no double-import warning from runpy).
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "monai_diffseg.data.synthetic", "--output_dir", str(tmp_path / "m"),
         "--num_train", "1", "--num_val", "0", "--num_test", "0", "--image_size", "16", "16"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "m")
