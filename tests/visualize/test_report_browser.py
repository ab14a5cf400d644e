# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""report.html of a real (tiny) bundle evaluate run, rendered by headless Chromium: the page is not blank and shows
one row per case. Skipped when no Chromium is installed (``apt-get install -y chromium``)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import TINY_NETWORKS, bundle_workflow
from PIL import Image

from monai_diffseg.data import make_synthetic_isic2018
from monai_diffseg.networks.nets import MedSegDiff

BROWSER = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")) if p), None
)


def _chromium(url: str, user_dir: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_dir}",
    ]
    return subprocess.run([BROWSER, *flags, *args, url], capture_output=True, text=True, timeout=180, check=True)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ISIC bundle's evaluate flow (inference.json + evaluate.json) on 5 synthetic cases, an untrained tiny net."""
    root = tmp_path_factory.mktemp("report_run")
    dataset = make_synthetic_isic2018(str(root / "data"), num_train=1, num_val=1, num_test=5, image_size=(40, 56))
    (root / "bundle" / "models").mkdir(parents=True)
    net = MedSegDiff(2, 3, 1, channels=(8, 16), cond_channels=(8, 16), norm_num_groups=4, anchor_head=True)
    torch.save(net.state_dict(), root / "bundle" / "models" / "model.pt")
    out = root / "eval"
    wf = bundle_workflow(
        "medsegdiff_isic2018",
        ["inference.json", "evaluate.json"],
        "eval",
        dataset_dir=dataset,
        bundle_root=str(root / "bundle"),
        output_dir=str(out),
        num_samples=2,
        num_inference_steps=2,
        batch_size=2,
        **TINY_NETWORKS["medsegdiff_isic2018"],
    )
    lines: list[str] = []
    capture = logging.Handler(logging.INFO)
    capture.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("CaseProgress").addHandler(capture)
    try:
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        logging.getLogger("CaseProgress").removeHandler(capture)
    (out / "progress.log").write_text("\n".join(lines))
    return out


def test_evaluate_flow_logs_progress_in_cases(evaluated: Path) -> None:
    lines = (evaluated / "progress.log").read_text().splitlines()
    assert lines[0] == "SupervisedEvaluator: 5 cases to run"
    # batch_size 2: 3 iterations; the default interval (a tenth of 5 cases -> every case) logs each of them
    assert [re.search(r": (\d)/5 cases", line).group(1) for line in lines[1:-1]] == ["2", "4", "5"]
    assert all("ETA " in line and "elapsed " in line for line in lines[1:-1])
    assert lines[-1].startswith("SupervisedEvaluator: done, 5 cases in ")


def test_evaluate_flow_writes_the_report(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    text = (evaluated / "report.html").read_text()
    rows = re.findall(r'<tr class="case" id="case-([^"]+)">', text)
    assert sorted(rows) == sorted(c["case"] for c in metrics["cases"]) and len(rows) == 5
    # the bundle sorts its review list by the ensemble's own error estimate (issue 16), highest first
    by_case = {c["case"]: c["ensemble_dice_error"] for c in metrics["cases"]}
    assert [by_case[c] for c in rows] == sorted(by_case.values(), reverse=True)
    assert text.count('src="data:image/png;base64,') == 5 * 4  # image, overlay, probability, uncertainty


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(evaluated: Path, tmp_path: Path) -> None:
    url = (evaluated / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    _chromium(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (2000, 1200, 3) and pixels.var() > 100.0  # not a blank page
    # the inlined images were decoded: the page holds colours (skin, red overlay), not only grey text and rules
    saturation = pixels.max(-1) - pixels.min(-1)
    assert (saturation > 60).sum() > 2000
    dom = _chromium(url, tmp_path / "profile2", "--dump-dom").stdout
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert len(re.findall(r'<tr class="case"', dom)) == metrics["num_cases"] == 5
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == 5 * 4
