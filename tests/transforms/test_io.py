# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Loading real-archive 2D files: colour modes, 16-bit, damaged files, image/mask size checks; collate padding."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, pad_list_data_collate
from PIL import Image

from monai_diffseg.transforms import LoadImage2D, LoadImage2Dd, PILModeConverter, UnpadCollated

RGB = np.stack([*np.meshgrid(np.arange(0, 200, 10), np.arange(0, 120, 10), indexing="xy"), np.full((12, 20), 7)], -1)
RGB = RGB.astype(np.uint8)  # (H=12, W=20, 3), distinct channel values


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_rgb_is_loaded_channel_first_in_pil_axis_order(tmp_path: Path) -> None:
    img = LoadImage2D("RGB")(_save(tmp_path / "a.png", RGB))
    assert isinstance(img, MetaTensor) and img.shape == (3, 20, 12)  # (C, W, H) as MONAI's PILReader
    assert torch.equal(img[0].T, torch.as_tensor(RGB[..., 0], dtype=torch.float32))


def test_grayscale_rgba_palette_become_rgb_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gray = RGB[..., 0]
    rgba = np.concatenate([RGB, np.full((12, 20, 1), 9, np.uint8)], -1)
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png")
    with caplog.at_level(logging.INFO, logger="monai_diffseg.transforms.io"):
        g = LoadImage2D("RGB")(_save(tmp_path / "g.png", gray))
        a = LoadImage2D("RGB")(_save(tmp_path / "a.png", rgba))
        p = LoadImage2D("RGB")(tmp_path / "p.png")
    assert g.shape == a.shape == p.shape == (3, 20, 12)
    assert all(torch.equal(g[c].T, torch.as_tensor(gray, dtype=torch.float32)) for c in range(3))  # replicated
    assert torch.equal(a.permute(2, 1, 0), torch.as_tensor(RGB, dtype=torch.float32))  # alpha dropped, colours kept
    assert torch.equal(p.permute(2, 1, 0), torch.as_tensor(np.asarray(palette.convert("RGB")), dtype=torch.float32))
    logged = caplog.text
    assert "g.png' from L to RGB" in logged and "a.png' from RGBA to RGB" in logged and "p.png' from P to RGB" in logged


def test_repeated_conversions_are_logged_once_per_kind_then_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load = LoadImage2D("L")
    paths = [_save(tmp_path / f"m{i}.png", RGB) for i in range(5)]
    with caplog.at_level(logging.INFO, logger="monai_diffseg.transforms.io"):
        for path in paths:
            load(path)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [m for m in info if m.startswith("converted")] == [f"converted '{p}' from RGB to L" for p in paths[:3]]
    assert info[-1] == "further conversions from RGB to L are logged at DEBUG level"


def test_16bit_grayscale_is_scaled_to_8bit(tmp_path: Path) -> None:
    wide = (RGB[..., 0].astype(np.uint16) * 257).astype(np.uint16)  # 16-bit copy of an 8-bit image
    path = tmp_path / "w.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    img = LoadImage2D("RGB")(path)
    assert torch.equal(img[1].T, torch.as_tensor(RGB[..., 0], dtype=torch.float32))
    # a 16-bit file that only uses 8-bit values is kept as is
    Image.fromarray(RGB[..., 0].astype(np.uint16)).save(path)
    assert torch.equal(LoadImage2D("L")(path)[0].T, torch.as_tensor(RGB[..., 0], dtype=torch.float32))


def test_as_stored_keeps_palette_indices_of_a_mask(tmp_path: Path) -> None:
    mask = Image.fromarray((RGB[..., 0] > 100).astype(np.uint8), mode="L").convert("P")
    mask.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    mask.save(tmp_path / "m.png")
    img = LoadImage2D("as_stored")(tmp_path / "m.png")
    assert img.shape == (1, 20, 12) and set(torch.unique(img).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing", "not_an_image"])
def test_damaged_files_name_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "case.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing":
        path.unlink()
    else:
        path.write_text("LICENSE: not an image")
    with pytest.raises(ValueError) as err:
        LoadImage2D("RGB")(path)
    assert str(path) in str(err.value)
    expected = {"truncated": "truncated", "empty": "0 bytes", "missing": "does not exist", "not_an_image": "cannot"}
    assert expected[damage] in str(err.value)


def test_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    image = _save(tmp_path / "i.png", RGB)
    mask = _save(tmp_path / "m.png", np.zeros((12, 21), np.uint8))
    loader = LoadImage2Dd(["image", "label"], modes=["RGB", "as_stored"])
    with pytest.raises(ValueError) as err:
        loader({"image": str(image), "label": str(mask)})
    text = str(err.value)
    assert "m.png" in text and "i.png" in text and "21x12" in text and "20x12" in text
    out = LoadImage2Dd(["image", "label"], ["RGB", "as_stored"], check_same_size=False)(
        {"image": str(image), "label": str(mask)}
    )
    assert out["label"].shape == (1, 21, 12)


def test_missing_label_is_allowed_when_asked(tmp_path: Path) -> None:
    image = _save(tmp_path / "i.png", RGB)
    loader = LoadImage2Dd(["image", "label"], modes=["RGB", "as_stored"], allow_missing_keys=True)
    out = loader({"image": str(image)})
    assert set(out) == {"image"} and out["image"].shape == (3, 20, 12)


def test_mask_loaded_in_its_own_step_is_checked_against_the_image(tmp_path: Path) -> None:
    image = _save(tmp_path / "i.png", RGB)
    mask = _save(tmp_path / "m.png", np.zeros((12, 21), np.uint8))
    loaded = LoadImage2Dd("image")({"image": str(image), "label": str(mask)})
    label_step = LoadImage2Dd("label", "as_stored", same_size_as="image", allow_missing_keys=True)
    with pytest.raises(ValueError) as err:
        label_step(loaded)
    assert "m.png" in str(err.value) and "i.png" in str(err.value) and "21x12" in str(err.value)
    assert set(label_step(LoadImage2Dd("image")({"image": str(image)}))) == {"image"}  # unlabelled: skipped


def test_converter_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="CMYK"):
        PILModeConverter("CMYK")


def test_unpad_restores_each_case_after_pad_collate() -> None:
    rng = np.random.default_rng(1)
    items = [
        {"image": torch.ones(3, 8, 8), "label": MetaTensor(torch.as_tensor(rng.random((1, h, w))))}
        for h, w in ((5, 9), (11, 4), (8, 8))
    ]
    originals = [i["label"].clone() for i in items]
    batch = pad_list_data_collate([dict(i) for i in items])
    assert batch["label"].shape == (3, 1, 11, 9) and batch["image"].shape == (3, 3, 8, 8)
    for case, original in zip(decollate_batch(batch), originals):
        restored = UnpadCollated(keys="label")(case)
        assert torch.equal(torch.as_tensor(restored["label"]), torch.as_tensor(original))
        assert restored["image"].shape == (3, 8, 8)


def test_save_maps_scales_each_map_by_its_range(tmp_path: Path) -> None:
    from monai_diffseg.transforms import SaveMapsd, display_range

    meta = {"filename_or_obj": str(tmp_path / "case7.jpg")}
    ramp = torch.linspace(0, 1, 20).repeat(12, 1).T[None]  # (1, W=20, H=12)
    data = {
        "pred": MetaTensor(ramp, meta=dict(meta)),
        "prob": MetaTensor(ramp, meta=dict(meta)),
        "variance": MetaTensor(ramp * 0.25, meta=dict(meta)),
        "entropy": MetaTensor(ramp * float(np.log(2)), meta=dict(meta)),
    }
    SaveMapsd(["pred", "prob", "variance", "entropy", "ambiguous"], tmp_path / "out", postfixes={"pred": "mask"})(data)
    mask = np.asarray(Image.open(tmp_path / "out" / "case7_mask.png"))
    prob = np.asarray(Image.open(tmp_path / "out" / "case7_prob.png"))
    assert mask.shape == prob.shape == (12, 20) and set(np.unique(mask)) == {0, 255}  # binary key thresholded
    assert prob[0, 0] == 0 and prob[0, -1] == 255
    for name in ("variance", "entropy"):  # each scaled by its own range to the same 0-255 ramp
        assert np.abs(np.asarray(Image.open(tmp_path / "out" / f"case7_{name}.png")).astype(int) - prob).max() <= 1
    assert not (tmp_path / "out" / "case7_ambiguous.png").exists()  # missing keys are skipped
    assert display_range("entropy", num_classes=3) == (0.0, pytest.approx(np.log(3)))
