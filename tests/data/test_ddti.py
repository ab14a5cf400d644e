# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""DDTI data lists: image/mask folders, the original XML release (outlines rasterised), group-aware holdout."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_diffseg.data import (
    DDTI_GROUP_REGEX,
    ddti_datalist,
    ddti_train_val_datalists,
    ddti_xml_polygons,
    detect_ddti_format,
    make_synthetic_ddti,
    rasterize_polygons,
)

_DDTI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ddti"


def _patient(case: str) -> str:
    return case.split("_")[0]


def _write_xml(path: Path, marks: dict[int, str]) -> None:
    body = "".join(f"<mark><image>{frame}</image><svg>{svg}</svg></mark>" for frame, svg in marks.items())
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?><case><number>1</number><tirads>3</tirads>{body}</case>')


def _svg(*outlines: list[tuple[int, int]]) -> str:
    return json.dumps([{"points": [{"x": x, "y": y} for x, y in o], "annotationType": "freehand"} for o in outlines])


def test_rasterize_polygons_by_hand() -> None:
    square = np.array([[1, 1], [3, 1], [3, 3], [1, 3]])  # (x, y): columns 1..3, rows 1..3, boundary included
    mask = rasterize_polygons([square], (5, 6))
    expected = np.zeros((5, 6), np.uint8)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(mask, expected)
    triangle = np.array([[5, 0], [5, 4], [4, 0]])  # a second outline: union, clipped at the border
    union = rasterize_polygons([square, triangle], (5, 6))
    assert union[0, 5] == 1 and union[4, 5] == 1 and union[4, 4] == 0 and union[1:4, 1:4].all()
    assert rasterize_polygons([], (3, 4)).shape == (3, 4) and not rasterize_polygons([], (3, 4)).any()
    with pytest.raises(ValueError, match=r"\(K >= 3, 2\)"):
        rasterize_polygons([np.array([[0, 0], [1, 1]])], (4, 4))


def test_folder_layout(tmp_path: Path) -> None:
    root = make_synthetic_ddti(tmp_path / "ddti", "folders", num_patients=6, crop_size=24, seed=1)
    assert detect_ddti_format(root) == "folders"
    dl = ddti_datalist(root)
    cases = [d["case"] for d in dl]
    assert cases == sorted(cases) and "2_1(1)" in cases and "2_1(2)" in cases and "1_1" in cases
    for d in dl:
        assert Path(d["image"]).parent.name == "images" and Path(d["label"]).name == f"{d['case']}.gif"
    masks = [np.asarray(Image.open(d["label"])) for d in dl]
    assert all(set(np.unique(m).tolist()) <= {0, 255} for m in masks)
    assert sum(not m.any() for m in masks) == 1  # the generator empties one mask, as the real set has a few
    assert ddti_datalist(root, labels=False)[0].keys() == {"image", "case"}

    # other extensions, singular folder names (TN-SCUI-style re-releases), case-insensitive extensions
    other = tmp_path / "other"
    (other / "image").mkdir(parents=True)
    (other / "mask").mkdir()
    Image.new("L", (8, 6)).save(other / "image" / "7_1.BMP")
    Image.new("L", (8, 6)).save(other / "mask" / "7_1.tif")
    Image.new("L", (8, 6)).save(other / "image" / "8_2.jpg")
    with pytest.raises(ValueError, match=r"8_2\.jpg"):  # an image without a mask is named
        ddti_datalist(other)
    Image.new("L", (8, 6)).save(other / "mask" / "8_2.png")
    assert [(d["case"], Path(d["label"]).name) for d in ddti_datalist(other)] == [
        ("7_1", "7_1.tif"),
        ("8_2", "8_2.png"),
    ]
    os.rename(other / "mask", other / "elsewhere")
    assert "label" not in ddti_datalist(other)[0]  # labels="auto": no mask folder, images only
    with pytest.raises(FileNotFoundError, match="mask folder not found"):
        ddti_datalist(other, labels=True)


def test_xml_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_synthetic_ddti(tmp_path / "ddti", "xml", num_patients=4, image_size=(30, 40), seed=2)
    assert detect_ddti_format(root) == "xml"
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="monai_diffseg.data.ddti"):
        dl = ddti_datalist(root, mask_cache_dir=cache)
    # patient 3 has 2 frames; the last patient's second frame has an empty <svg>: left out and logged
    assert [d["case"] for d in dl] == ["1_1", "2_1", "3_1", "3_2", "4_1"]
    assert "4_2: no usable outline for frame 2" in caplog.text
    for d in dl:
        mask = np.asarray(Image.open(d["label"]))
        assert Path(d["label"]).parent == cache and mask.shape == Image.open(d["image"]).size[::-1]
        assert set(np.unique(mask).tolist()) == {0, 255}
        # the cached mask is exactly the filled outlines of the XML
        patient, frame = d["case"].split("_")
        outlines = ddti_xml_polygons(Path(root) / f"{patient}.xml")[int(frame)]
        np.testing.assert_array_equal(mask // 255, rasterize_polygons(outlines, mask.shape))
    assert "3_2" in {d["case"] for d in dl} and Image.open(dl[3]["image"]).size != Image.open(dl[0]["image"]).size

    assert [d["case"] for d in ddti_datalist(root, mask_cache_dir=cache, unannotated="empty")][-1] == "4_2"
    assert not np.asarray(Image.open(cache / "4_2.png")).any()
    with pytest.raises(ValueError, match=r"1 DDTI frame\(s\).*4_2.*unannotated='skip'"):
        ddti_datalist(root, mask_cache_dir=cache, unannotated="error")
    assert ddti_datalist(root, labels=False)[-1] == {"image": str(Path(root) / "4_2.jpg"), "case": "4_2"}
    # default cache: next to the data
    assert Path(ddti_datalist(root)[0]["label"]).parent == Path(root) / "masks_from_xml"


def test_xml_cache_is_rewritten_when_the_annotation_changes(tmp_path: Path) -> None:
    root = tmp_path / "ddti"
    root.mkdir()
    Image.new("L", (10, 8), 90).save(root / "5_1.jpg")
    _write_xml(root / "5.xml", {1: _svg([(1, 1), (3, 1), (3, 3), (1, 3)])})
    (label,) = [d["label"] for d in ddti_datalist(root, mask_cache_dir=tmp_path / "c")]
    assert int((np.asarray(Image.open(label)) > 0).sum()) == 9
    stamp = os.path.getmtime(label)
    ddti_datalist(root, mask_cache_dir=tmp_path / "c")
    assert os.path.getmtime(label) == stamp  # up to date: not rewritten
    # two outlines in two marks of the same frame are merged
    _write_xml(root / "5.xml", {1: _svg([(1, 1), (3, 1), (3, 3), (1, 3)], [(6, 5), (8, 5), (8, 7), (6, 7)])})
    later = time.time() + 5
    os.utime(root / "5.xml", (later, later))
    ddti_datalist(root, mask_cache_dir=tmp_path / "c")
    assert int((np.asarray(Image.open(label)) > 0).sum()) == 18


def test_xml_problems(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ddti"
    root.mkdir()
    for name in ("1_1.jpg", "1_2.jpg", "2_1.jpg", "3_1.jpg"):
        Image.new("L", (12, 9), 80).save(root / name)
    (root / "notes.txt").write_text("not an image")
    _write_xml(root / "1.xml", {1: _svg([(0, 0), (5, 0), (5, 5)]), 2: "None"})  # malformed <svg> of frame 2
    (root / "2.xml").write_text("<case><mark>")  # not well-formed
    # 3_1.jpg has no 3.xml
    with caplog.at_level(logging.WARNING, logger="monai_diffseg.data.ddti"):
        dl = ddti_datalist(root, mask_cache_dir=tmp_path / "c")
    assert [d["case"] for d in dl] == ["1_1"]
    assert "1.xml' frame 2: unusable <svg> outline" in caplog.text
    assert "cannot parse DDTI annotation file" in caplog.text and "3.xml" in caplog.text
    with pytest.raises(ValueError, match=r"cannot parse DDTI annotation file '.*2\.xml'"):
        ddti_datalist(root, mask_cache_dir=tmp_path / "c", unannotated="error")
    assert ddti_xml_polygons(root / "1.xml")[2] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"not a DDTI layout.*readme\.txt"):
        ddti_datalist(empty)
    with pytest.raises(FileNotFoundError, match="nope"):
        ddti_datalist(tmp_path / "nope")
    with pytest.raises(ValueError, match="unannotated"):
        ddti_datalist(root, unannotated="drop")


@pytest.mark.parametrize("dataset_format", ["folders", "xml"])
def test_train_val_split_by_patient(tmp_path: Path, dataset_format: str) -> None:
    root = make_synthetic_ddti(tmp_path / "ddti", dataset_format, num_patients=9, image_size=(24, 32), seed=0)
    for seed in range(4):
        train, val = ddti_train_val_datalists(root, val_fraction=0.25, seed=seed, mask_cache_dir=tmp_path / "c")
        assert val and train and not {_patient(d["case"]) for d in train} & {_patient(d["case"]) for d in val}
    every = ddti_datalist(root, mask_cache_dir=tmp_path / "c")
    assert sorted(d["case"] for d in train + val) == [d["case"] for d in every]
    assert ddti_train_val_datalists(root, 0.25, 3, mask_cache_dir=tmp_path / "c") == (train, val)
    # ungrouped on request; a regex that misses a case id is named
    ddti_train_val_datalists(root, 0.25, group_regex=None, mask_cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"does not match group_regex '\^P\(\\d\+\)'"):
        ddti_train_val_datalists(root, 0.25, group_regex=r"^P(\d+)", mask_cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="val_fraction"):
        ddti_train_val_datalists(root, 1.0)


@pytest.mark.realdata
@pytest.mark.skipif(not _DDTI.is_dir(), reason="../shared/data/ddti not available")
def test_shared_ddti_copy() -> None:
    dl = ddti_datalist(_DDTI)
    assert len(dl) == 495 and all(Path(d["label"]).suffix == ".gif" for d in dl)
    assert sum(not np.asarray(Image.open(d["label"])).any() for d in dl) >= 1  # a few empty masks
    train, val = ddti_train_val_datalists(_DDTI, val_fraction=0.2, seed=0, group_regex=DDTI_GROUP_REGEX)
    assert len(val) == 99 and not {_patient(d["case"]) for d in train} & {_patient(d["case"]) for d in val}
