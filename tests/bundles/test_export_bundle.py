# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""``python -m monai_diffseg.export --bundle_root ...``: a bundle's trained network as model.ts, run by its own inferer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_utils import ROOT, TINY_NETWORKS, bundle_workflow
from monai.bundle import ConfigParser

from monai_diffseg.export import export_bundle, main
from monai_diffseg.networks.exported import EXPORT_META_KEY, ExportedMedSegDiff


def _bundle(bundle: str, tmp_path: Path) -> tuple[ConfigParser, Path]:
    """The bundle's inference config with the tiny network, and a model.pt of it (random weights, seeded)."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    for key, value in TINY_NETWORKS[bundle].items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    return parser, ckpt


@pytest.mark.parametrize("bundle", ["medsegdiff_isic2018", "medsegdiff_brats"])
def test_export_bundle_runs_in_the_bundle_inferer(bundle: str, tmp_path: Path) -> None:
    """The exported parts under the bundle's own inferer (DDIM ensemble; BraTS: sliding windows of roi_size) give the
    eager network's probabilities; metadata.json and inference.json travel inside model.ts."""
    parser, ckpt = _bundle(bundle, tmp_path)
    written = export_bundle(
        ROOT / "bundles" / bundle, "torchscript", ckpt_file=ckpt, output_dir=tmp_path, overrides=TINY_NETWORKS[bundle]
    )
    assert written == [str(tmp_path / "model.ts")]
    exported = ExportedMedSegDiff(written[0])
    spatial = parser.get_parsed_content("roi_size" if "roi_size" in parser else "image_size")
    assert list(exported.spatial_shape) == list(spatial)
    assert (
        exported.metadata["name"]
        == json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())["name"]
    )
    assert exported.metadata[EXPORT_META_KEY]["in_channels"] == parser["network_def"]["in_channels"]
    assert json.loads(exported.extra_files["inference.json"])["network_def"]["channels"] == [8, 16]

    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(ckpt, weights_only=True))
    network.eval()
    parser["num_inference_steps"], parser["num_samples"] = 3, 2
    inferer = parser.get_parsed_content("inferer")
    # BraTS: a volume larger than one window, so the exported parts run on every window of the sliding inferer
    size = [s + s // 2 for s in spatial] if "roi_size" in parser else list(spatial)
    image = torch.rand(1, parser["network_def"]["in_channels"], *size)
    torch.testing.assert_close(inferer(image, exported), inferer(image, network), atol=1e-5, rtol=1e-5)


def test_command_line_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, ckpt = _bundle("medsegdiff_polyp", tmp_path)
    root = str(ROOT / "bundles" / "medsegdiff_polyp")
    with pytest.raises(FileNotFoundError, match="train the bundle first"):
        export_bundle(root, ckpt_file=tmp_path / "none.pt", output_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="is --bundle_root a bundle folder"):
        export_bundle(tmp_path, ckpt_file=ckpt, output_dir=tmp_path)
    # a checkpoint that does not fit the bundle's network_def (the default, not the tiny one) is refused by name
    with pytest.raises(Exception, match="model.pt"):
        export_bundle(root, ckpt_file=ckpt, output_dir=tmp_path)
    written = main(
        ["--bundle_root", root, "--ckpt_file", str(ckpt), "--output_dir", str(tmp_path), "--filename", "tiny"]
        + ["--spatial_shape", "64", "64"]
        + [f"--set={k}={json.dumps(v)}" for k, v in TINY_NETWORKS["medsegdiff_polyp"].items()]
    )
    assert written == [str(tmp_path / "tiny.ts")] and capsys.readouterr().out.strip() == written[0]
    assert ExportedMedSegDiff(written[0]).spatial_shape == (64, 64)


def test_bundle_inference_workflow_on_the_export(tmp_path: Path) -> None:
    """The whole inference.json (SupervisedEvaluator, fusion, writers, per-case metrics) with the network replaced by
    the export, as the README shows it, writes the eager run's masks and metrics."""
    from monai_diffseg.data import make_synthetic_isic2018

    bundle = "medsegdiff_isic2018"
    dataset = make_synthetic_isic2018(str(tmp_path / "data"), num_train=1, num_val=1, num_test=2, image_size=(40, 56))
    _, ckpt = _bundle(bundle, tmp_path)
    (tmp_path / "models").mkdir()
    ckpt.rename(tmp_path / "models" / "model.pt")
    export_bundle(
        ROOT / "bundles" / bundle,
        ckpt_file=tmp_path / "models" / "model.pt",
        output_dir=tmp_path / "models",
        overrides=TINY_NETWORKS[bundle],
    )
    exported = {  # the README's command-line overrides
        "network": "$monai_diffseg.networks.ExportedMedSegDiff(@bundle_root + '/models/model.ts', device=@device)",
        "handlers#0#_disabled_": "true",  # the checkpoint loader: the weights are in model.ts
    }
    outputs = {}
    for name, override in (("eager", {}), ("exported", exported)):
        out = tmp_path / name
        wf = bundle_workflow(
            bundle,
            "inference.json",
            "infer",
            dataset_dir=dataset,
            bundle_root=str(tmp_path),
            output_dir=str(out),
            num_samples=2,
            num_inference_steps=3,
            **TINY_NETWORKS[bundle],
            **override,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
        outputs[name] = out
    assert isinstance(wf.parser.get_parsed_content("network"), ExportedMedSegDiff)
    eager, export = (json.loads((outputs[k] / "metrics.json").read_text()) for k in ("eager", "exported"))
    assert export["num_cases"] == 2 and export["cases"] == eager["cases"]
    masks = sorted(p.name for p in outputs["eager"].glob("*_mask.png"))
    assert len(masks) == 2
    for name in masks:
        assert (outputs["exported"] / name).read_bytes() == (outputs["eager"] / name).read_bytes()
