# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""write_report / ReviewReportWriter / the CLI on small hand-made output folders (2D PNG and 3D NIfTI)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Engine
from PIL import Image

from monai_diffseg.handlers import ReviewReportWriter
from monai_diffseg.visualize import case_sources, write_report

ROOT = Path(__file__).resolve().parents[2]


def _png(path: Path, value: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(value.astype(np.uint8)).save(path)


def _metrics(out: Path, cases: list[dict], **extra) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"num_cases": len(cases), "num_labelled": 2, "mean_dice": 0.5, "cases": cases, "failed": [], **extra}
    (out / "metrics.json").write_text(json.dumps(payload))


def _rows(text: str) -> list[str]:
    return re.findall(r'<tr class="case" id="case-([^"]+)">', text)


def _images(row_html: str) -> list[np.ndarray]:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', row_html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u)))) for u in uris]


def _row_html(text: str, case: str) -> str:
    start = text.index(f'id="case-{case}"')
    end = text.find('<tr class="case"', start + 1)
    return text[start : end if end > 0 else len(text)]


@pytest.fixture
def run2d(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Output folder of a 2D run: 3 cases (one unlabelled), their maps and source images."""
    data, out = tmp_path / "data", tmp_path / "out"
    rng = np.random.default_rng(0)
    sources = {}
    for i, case in enumerate(["a", "b", "c"]):
        sources[case] = str(data / f"{case}.jpg")
        _png(data / f"{case}.png", rng.integers(0, 255, (20, 30, 3)))
        Image.open(data / f"{case}.png").save(sources[case])
        _png(out / f"{case}_overlay.png", np.full((20, 30, 3), 40 * i))
        _png(out / f"{case}_prob.png", np.full((20, 30), 100))
        _png(out / f"{case}_variance.png", np.full((20, 30), 10 * (i + 1)))
        _png(out / f"{case}_mask.png", np.zeros((20, 30)))
    cases = [
        {"case": "a", "dice": 0.9, "sample_diversity": 0.1},
        {"case": "b", "dice": None, "sample_diversity": 0.7},
        {"case": "c", "dice": 0.2, "sample_diversity": 0.4},
    ]
    _metrics(out, cases, failed=[{"case": "bad", "files": [], "reason": "OSError: truncated"}], num_failed=1)
    return out, sources


def test_rows_sorted_most_uncertain_first_and_self_contained(run2d: tuple[Path, dict[str, str]]) -> None:
    out, sources = run2d
    path = write_report(out, sources=sources)
    assert path == str(out / "report.html")
    text = Path(path).read_text()
    assert _rows(text) == ["b", "c", "a"]  # sample_diversity 0.7, 0.4, 0.1
    # every image is inlined: no reference to a file or URL
    assert re.findall(r'src="(?!data:image/png;base64,)', text) == [] and "href=" not in text
    assert "mean_dice" in text and "0.5000" in text  # the run summary
    assert "bad" in text and "truncated" in text  # the failed case is listed
    row_a = _row_html(text, "a")
    assert '<tr class="primary"><td>dice</td><td>0.9000</td>' in row_a
    assert "dice" not in _row_html(text, "b")  # unlabelled: no Dice shown rather than "None"
    images = _images(row_a)
    assert len(images) == 4  # image, overlay, probability, uncertainty
    source = np.asarray(Image.open(sources["a"]).convert("RGB"))
    np.testing.assert_array_equal(images[0], source)  # small sources are not resized
    np.testing.assert_array_equal(images[1], np.zeros((20, 30, 3)))  # case a's overlay (value 0)


def test_uncertainty_map_mean_orders_cases_without_the_score(run2d: tuple[Path, dict[str, str]]) -> None:
    out, sources = run2d
    text = Path(write_report(out, sources=sources, sort_by="no_such_score")).read_text()
    assert _rows(text) == ["c", "b", "a"]  # variance maps 30, 20, 10
    assert "sorted by mean uncertainty map" in text


def test_max_cases_and_missing_source(run2d: tuple[Path, dict[str, str]]) -> None:
    out, _ = run2d
    text = Path(write_report(out, max_cases=2, report_file="top.html")).read_text()
    assert _rows(text) == ["b", "c"] and "Cases (2 of 3)" in text
    assert '<td class="missing">&mdash;</td>' in _row_html(text, "b")  # no source image known


def test_cli_finds_sources_under_image_dir(run2d: tuple[Path, dict[str, str]]) -> None:
    out, sources = run2d
    data = Path(sources["a"]).parent
    cmd = [sys.executable, "-m", "monai_diffseg.visualize.report", str(out), "--image-dir", str(data)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == str(out / "report.html")
    assert "RuntimeWarning" not in result.stderr
    text = (out / "report.html").read_text()
    assert all(len(_images(_row_html(text, c))) == 4 for c in "abc")


def test_same_file_names_in_case_folders_and_per_channel_maps(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    sources = {}
    for i, case in enumerate(["case01", "case02"]):  # data_root_dir layout: <case>/image_<postfix>.png
        sources[case] = str(data / case / "image.png")
        _png(data / case / "image.png", np.full((8, 8), 50 * i))
        for channel in ("cup", "disc"):  # maps written per channel: <stem>_<channel>_<postfix>.png
            _png(out / case / f"image_{channel}_prob.png", np.full((8, 8), 60 * i + (5 if channel == "cup" else 0)))
    _metrics(out, [{"case": "case01", "sample_diversity": 0.2}, {"case": "case02", "sample_diversity": 0.3}])
    text = Path(write_report(out, sources=sources)).read_text()
    row = _row_html(text, "case02")
    assert "<figcaption>cup</figcaption>" in row and "<figcaption>disc</figcaption>" in row
    probs = [img for img in _images(row) if img.ndim == 2]  # grey maps (the source is shown as RGB)
    assert [int(p[0, 0]) for p in probs] == [65, 60]  # case02's own maps, cup then disc


def test_3d_case_shows_the_slice_with_most_foreground(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    out.mkdir(parents=True)
    data.mkdir()
    shape = (12, 10, 9)
    flair = np.zeros(shape, np.float32)
    flair[:, :, 6] = np.arange(12 * 10).reshape(12, 10)  # only slice 6 has structure
    seg = np.zeros(shape, np.uint8)
    seg[2:5, 2:5, 3] = 1  # small
    seg[3:9, 3:9, 6] = 2  # largest inside the head at z = 6
    seg[:, :, 8] = 1  # the whole slice 8, where the image is empty (outside the head): not chosen
    prob = np.zeros((*shape, 3), np.float32)
    prob[..., 6, 1] = 0.8
    for name, vol in [("data/case1_flair", flair), ("data/case1_seg", seg), ("out/case1_seg", seg)]:
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(prob, np.eye(4)), str(out / "case1_prob.nii.gz"))
    nib.save(nib.Nifti1Image(prob / 4, np.eye(4)), str(out / "case1_variance.nii.gz"))
    _metrics(out, [{"case": "case1", "dice": 0.5, "sample_diversity": 0.1}])
    datalist = [
        {
            "image": [str(data / "t1.nii.gz"), str(data / "case1_flair.nii.gz")],
            "label": str(data / "case1_seg.nii.gz"),
            "case": "case1",
        }
    ]
    path = write_report(out, sources=case_sources(datalist), labels=case_sources(datalist, "label"))
    images = _images(_row_html(Path(path).read_text(), "case1"))
    assert len(images) == 4
    image, overlay, probability = images[0], images[1], images[2]
    assert image.shape[:2] == (10, 12) and image.std() > 0  # slice 6 (rotated for display), not an empty one
    assert (overlay[..., 0] > overlay[..., 1]).any() and (overlay == [0, 255, 0]).all(-1).any()  # red pred, green GT
    assert probability.max() == round(0.8 * 255)


def test_missing_metrics_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="'cases'"):
        write_report(tmp_path)


def test_case_sources_uses_case_ids_like_the_metrics_writer() -> None:
    datalist = [{"image": "/d/x/img1.png", "case": "p1"}, {"image": "/d/img2.jpg"}, {"label": "/d/l.png"}]
    assert case_sources(datalist) == {"p1": "/d/x/img1.png", "img2": "/d/img2.jpg"}
    assert case_sources(datalist, "label") == {"l": "/d/l.png"}
    assert case_sources(None) == {}


def test_handler_writes_the_report_at_completed(run2d: tuple[Path, dict[str, str]]) -> None:
    out, sources = run2d
    datalist = [{"image": src, "case": case} for case, src in sources.items()]
    engine = Engine(lambda e, b: None)
    writer = ReviewReportWriter(out, datalist=datalist, thumb_size=16)
    writer.attach(engine)
    ReviewReportWriter(out, report_file="off.html", enabled=False).attach(engine)
    engine.run([0], max_epochs=1)
    assert writer.report_path == str(out / "report.html") and not (out / "off.html").exists()
    images = _images(_row_html(Path(writer.report_path).read_text(), "a"))
    assert images[0].shape[:2] == (11, 16)  # thumbnail of the 20 x 30 source, longest side 16


def test_handler_without_metrics_warns_instead_of_failing_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(lambda e, b: None)
    writer = ReviewReportWriter(tmp_path)
    writer.attach(engine)
    with caplog.at_level("WARNING"):
        engine.run([0], max_epochs=1)
    assert writer.report_path is None and not (tmp_path / "report.html").exists()
    assert "no report.html written" in caplog.text and "metrics.json" in caplog.text


def test_thumbnails_display_at_thumb_size_and_jpeg_option(run2d: tuple[Path, dict[str, str]]) -> None:
    out, sources = run2d
    text = Path(write_report(out, sources=sources, thumb_size=60)).read_text()
    sizes = set(re.findall(r'<img src="data:image/png;base64,[^"]+" width="(\d+)" height="(\d+)"', text))
    assert sizes == {("60", "40")}  # 30 x 20 images shown enlarged, aspect kept
    text = Path(write_report(out, sources=sources, thumb_format="jpeg")).read_text()
    assert text.count('src="data:image/jpeg;base64,') == 12 and "data:image/png" not in text
    with pytest.raises(ValueError, match="gif"):
        write_report(out, thumb_format="gif")
