# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for segmentation overlays."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Resized
from PIL import Image
from skimage.segmentation import find_boundaries

from monai_diffseg.visualize import SaveOverlayd, overlay_mask, save_overlay

RED, GREEN = (255, 0, 0), (0, 255, 0)
H, W = 30, 50  # non-square on purpose: PILReader arrays are (W, H)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 200, size=(H, W, 3), dtype=np.uint8)


def _mask() -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[5:15, 10:30] = 1  # asymmetric rectangle so a transposition would be caught
    return m


def test_overlay_colours() -> None:
    img, mask = _image(), _mask()
    out = overlay_mask(img, mask, alpha=0.4)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    edge = find_boundaries(mask.astype(bool), mode="inner")
    interior = mask.astype(bool) & ~edge
    expected = np.round(img.astype(float) * 0.6 + np.array(RED) * 0.4).astype(np.uint8)
    assert np.array_equal(out[interior], expected[interior])
    assert np.all(out[edge] == RED)
    assert np.array_equal(out[mask == 0], img[mask == 0])
    assert np.all(out[interior][:, 0] > out[interior][:, 1])  # reddish


def test_overlay_label_prob_and_gray_float() -> None:
    img, mask = _image(1), _mask()
    label = np.zeros((H, W), dtype=bool)
    label[18:25, 30:45] = True
    out = overlay_mask(img, mask, label=label)
    gt_edge = find_boundaries(label, mode="outer")
    assert np.all(out[gt_edge] == GREEN)
    untouched = (mask == 0) & ~gt_edge
    assert np.array_equal(out[untouched], img[untouched])

    prob = np.full((H, W), 0.5)
    out = overlay_mask(img, np.zeros((H, W)), prob=prob, alpha=1.0)
    assert np.array_equal(out, np.round(img * 0.5 + np.array(RED) * 0.5).astype(np.uint8))

    gray = np.linspace(0.0, 1.0, H * W).reshape(H, W)
    out = overlay_mask(torch.as_tensor(gray), np.zeros((H, W)))
    assert np.array_equal(out[..., 0], np.round(gray * 255).astype(np.uint8))
    assert np.array_equal(out[..., 0], out[..., 2])
    wide = overlay_mask(gray * 4000.0 - 1000.0, np.zeros((H, W)))  # e.g. CT-like range -> min-max
    assert wide.min() == 0 and wide.max() == 255


def test_overlay_errors() -> None:
    with pytest.raises(ValueError, match=r"\(20, 50\).*\(30, 50\)"):
        overlay_mask(_image(), np.zeros((20, 50)))
    with pytest.raises(ValueError, match=r"label shape \(50, 30\)"):
        overlay_mask(_image(), _mask(), label=np.zeros((50, 30)))
    with pytest.raises(ValueError, match="image must have shape"):
        overlay_mask(np.zeros((2, H, W, 3)), _mask())
    with pytest.raises(ValueError, match="prob must be in"):
        overlay_mask(_image(), _mask(), prob=np.full((H, W), 2.0))
    with pytest.raises(ValueError, match="alpha"):
        overlay_mask(_image(), _mask(), alpha=1.5)


def test_save_overlay_atomic(tmp_path: Path) -> None:
    img, mask = _image(), _mask()
    path = save_overlay(tmp_path / "sub" / "case.png", img, mask)
    assert path == str(tmp_path / "sub" / "case.png")
    assert os.listdir(tmp_path / "sub") == ["case.png"]  # no temp file left behind
    assert np.array_equal(np.asarray(Image.open(path)), overlay_mask(img, mask))
    with pytest.raises(ValueError, match="case.jpg"):
        save_overlay(tmp_path / "case.jpg", img, mask)


def _write_case(tmp_path: Path) -> tuple[str, str, np.ndarray]:
    img = _image(2)
    image_path, label_path = str(tmp_path / "ISIC_0000001.png"), str(tmp_path / "ISIC_0000001_segmentation.png")
    Image.fromarray(img).save(image_path)
    Image.fromarray(_mask() * np.uint8(255)).save(label_path)
    return image_path, label_path, img


def test_save_overlayd_with_pil_reader(tmp_path: Path) -> None:
    image_path, label_path, img = _write_case(tmp_path)
    keys = ["image", "label"]
    load = Compose([LoadImaged(keys=keys, reader="PILReader"), EnsureChannelFirstd(keys=keys)])
    d = load({"image": image_path, "label": label_path})
    assert tuple(d["image"].shape) == (3, W, H)
    mask = _mask()
    d["pred"] = MetaTensor(torch.as_tensor(mask.T[None].copy()))  # (1, W, H) like MONAI predictions
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a transposition mistake would trigger the resize warning
        out = SaveOverlayd(keys="pred", output_dir=tmp_path / "out", label_key="label")(d)
    assert out is d
    saved = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000001_overlay.png"))
    assert saved.shape == (H, W, 3)
    inside = mask.astype(bool)
    assert np.all(saved[inside][:, 0] >= img[inside][:, 0])
    assert np.all(saved[inside][:, 0] > saved[inside][:, 1]) and np.all(saved[inside][:, 0] > saved[inside][:, 2])
    outside = ~inside & ~find_boundaries(inside, mode="outer")  # green GT contour sits just outside
    assert np.array_equal(saved[outside], img[outside])
    assert np.all(saved[find_boundaries(inside, mode="outer")] == GREEN)


def test_save_overlayd_after_invertd(tmp_path: Path) -> None:
    image_path, _, img = _write_case(tmp_path)
    pre = Compose([LoadImaged(keys="image", reader="PILReader"), EnsureChannelFirstd(keys="image"),
                   Resized(keys="image", spatial_size=(16, 16))])  # fmt: skip
    d = pre({"image": image_path})
    # A "prediction" at network resolution that carries the image's transform history.
    d["pred"] = MetaTensor(torch.zeros((1, 16, 16)), meta=dict(d["image"].meta),
                           applied_operations=list(d["image"].applied_operations))  # fmt: skip
    d["pred"][0, 5:11, 3:8] = 1  # (W, H) indices
    d = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(d)
    assert tuple(d["pred"].shape) == (1, W, H)
    SaveOverlayd(keys="pred", output_dir=tmp_path / "out", output_postfix="pred")(d)
    saved = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000001_pred.png"))
    inside = d["pred"][0].numpy().T > 0.5
    assert saved.shape == (H, W, 3) and inside.any()
    assert np.all(saved[inside][:, 0] > saved[inside][:, 1])
    assert np.array_equal(saved[~inside], img[~inside])


def test_save_overlayd_resizes_and_warns_once(tmp_path: Path) -> None:
    image_path, _, img = _write_case(tmp_path)
    d = EnsureChannelFirstd(keys="image")(LoadImaged(keys="image", reader="PILReader")({"image": image_path}))
    half = np.zeros((H // 2, W // 2), dtype=np.uint8)
    half[:, W // 4 :] = 1  # right half of the image
    d["pred"] = torch.as_tensor(half.T[None].copy())
    saver = SaveOverlayd(keys="pred", output_dir=tmp_path / "out")
    with pytest.warns(UserWarning, match="nearest neighbour"):
        saver(d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saver(d)  # warned once only
    saved = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000001_overlay.png"))
    assert saved.shape == (H, W, 3)
    assert np.array_equal(saved[:, :20], img[:, :20])
    assert np.all(saved[:, 30:, 0] > saved[:, 30:, 1])


def test_save_overlayd_errors(tmp_path: Path) -> None:
    saver = SaveOverlayd(keys="pred", output_dir=tmp_path)
    with pytest.raises(ValueError, match="filename_or_obj"):
        saver({"image": torch.zeros(3, W, H), "pred": torch.zeros(1, W, H)})
    with pytest.raises(FileNotFoundError, match="gone.png"):
        saver({"image": MetaTensor(torch.zeros(3, W, H), meta={"filename_or_obj": str(tmp_path / "gone.png")}),
               "pred": torch.zeros(1, W, H)})  # fmt: skip
    with pytest.raises(ValueError, match="decollate"):
        saver({"image": MetaTensor(torch.zeros(3, W, H), meta={"filename_or_obj": ["a.png", "b.png"]}),
               "pred": torch.zeros(1, W, H)})  # fmt: skip


def test_save_overlayd_label_none_draws_no_contour(tmp_path: Path) -> None:
    image_path, _, img = _write_case(tmp_path)
    d = Compose([LoadImaged(keys="image", reader="PILReader"), EnsureChannelFirstd(keys="image")])(
        {"image": image_path}
    )
    d["pred"] = MetaTensor(torch.as_tensor(_mask().T[None].copy()))
    d["label"] = None  # what SupervisedEvaluator passes for unlabelled cases
    SaveOverlayd(keys="pred", output_dir=tmp_path / "out", label_key="label")(d)
    saved = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000001_overlay.png"))
    assert not np.any(np.all(saved == GREEN, axis=-1))  # no ground-truth contour drawn
    assert np.any(saved != img)  # the prediction is drawn


def test_save_overlayd_16bit_source_like_the_loader(tmp_path: Path) -> None:
    """A 16-bit grayscale source is drawn as the bundles' loader sees it (x 255 / 65535), not clipped to white."""
    gray = np.tile(np.arange(0, 200, 10, dtype=np.uint16), (12, 1))  # (H=12, W=20), 8-bit values
    Image.fromarray(gray * 257).save(tmp_path / "w16.png")
    assert Image.open(tmp_path / "w16.png").mode.startswith("I")
    img = MetaTensor(torch.zeros(1, 20, 12), meta={"filename_or_obj": str(tmp_path / "w16.png")})
    SaveOverlayd("pred", str(tmp_path / "out"))({"image": img, "pred": torch.zeros(1, 20, 12)})
    out = np.asarray(Image.open(tmp_path / "out" / "w16_overlay.png"))
    assert out.shape == (12, 20, 3) and np.array_equal(out[..., 0], gray.astype(np.uint8))


def test_save_overlayd_data_root_dir_keeps_case_folders(tmp_path: Path) -> None:
    # QUBIQ-like layout: every case's image is called image.png
    rng = np.random.default_rng(0)
    items = []
    for case in ("case01", "case02"):
        (tmp_path / "data" / case).mkdir(parents=True)
        path = tmp_path / "data" / case / "image.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
        items.append({"image": MetaTensor(torch.zeros(3, W, H), meta={"filename_or_obj": str(path)})})
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(outside)
    items.append({"image": MetaTensor(torch.zeros(3, W, H), meta={"filename_or_obj": str(outside)})})
    save = SaveOverlayd(keys="pred", output_dir=tmp_path / "out", data_root_dir=tmp_path / "data")
    for item in items:
        save({**item, "pred": torch.as_tensor(_mask().T[None].copy())})
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["case01/image_overlay.png", "case02/image_overlay.png", "elsewhere_overlay.png"]
