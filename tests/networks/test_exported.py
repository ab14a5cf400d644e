# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""MedSegDiff exported to TorchScript / ONNX: the sampler on the exported parts gives the eager masks."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.utils import optional_import

from monai_diffseg.inferers import DiffusionSegmentationInferer
from monai_diffseg.networks.blocks import FFParser
from monai_diffseg.networks.exported import EXPORT_META_KEY, ExportedMedSegDiff, export_medsegdiff, onnx_part_paths
from monai_diffseg.networks.nets import MedSegDiff

_, has_ort = optional_import("onnxruntime")
_, has_onnxscript = optional_import("onnxscript")

SMALL = {"channels": (8, 16), "cond_channels": (8, 16), "num_head_channels": 8, "attention_levels": (False, True)}


def _net(spatial_dims: int = 2, out_channels: int = 1, **kwargs) -> MedSegDiff:
    """A small trained-looking MedSegDiff: random FF-Parser weights (an identity filter would hide a wrong export)."""
    torch.manual_seed(0)
    net = MedSegDiff(spatial_dims, 3, out_channels, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, FFParser):
                module.weight_real.normal_(1.0, 0.5)
                module.weight_imag.normal_(0.0, 0.5)
    return net


def _inferer(scheduler_cls: type = DDIMScheduler, **kwargs) -> DiffusionSegmentationInferer:
    scheduler = scheduler_cls(num_train_timesteps=1000, prediction_type="sample")
    return DiffusionSegmentationInferer(
        scheduler, num_inference_steps=4, num_samples=3, seed=7, return_samples=True, **kwargs
    )


def test_fixed_size_ff_parser_equals_block() -> None:
    """The export's FF-Parser (precomputed weight, real arithmetic) is the block at that size, in 2D and 3D."""
    from monai_diffseg.networks.exported import _FixedSizeFFParser

    for size in ((12, 10), (6, 8, 10)):
        torch.manual_seed(1)
        block = FFParser(len(size), 4, weight_size=8)
        with torch.no_grad():
            block.weight_real.normal_(1.0, 0.5)
            block.weight_imag.normal_(0.0, 0.5)
        x = torch.randn(2, 4, *size)
        torch.testing.assert_close(_FixedSizeFFParser(block, size)(x), block(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("out_channels", [1, 2])
def test_torchscript_sampler_equals_eager(tmp_path, out_channels: int) -> None:
    net = _net(out_channels=out_channels)
    path = export_medsegdiff(net, tmp_path / "model.ts", (32, 32), "torchscript", meta_values={"name": "tiny"})[0]
    exported = ExportedMedSegDiff(path)
    assert (exported.out_channels, exported.in_channels, exported.spatial_shape) == (out_channels, 3, (32, 32))
    assert exported.metadata["name"] == "tiny" and exported.metadata[EXPORT_META_KEY]["num_levels"] == 2
    images = torch.rand(3, 3, 32, 32)  # 3 images x 3 members: batch 9, traced at batch 2
    inferer = _inferer()
    torch.testing.assert_close(inferer(images, exported), inferer(images, net), atol=1e-5, rtol=1e-5)
    # a single image, the stochastic DDPM path (one generator per member) and the anchor-initialised start
    torch.testing.assert_close(inferer(images[:1], exported), inferer(images[:1], net), atol=1e-5, rtol=1e-5)
    ddpm = _inferer(DDPMScheduler)
    torch.testing.assert_close(ddpm(images[:2], exported), ddpm(images[:2], net), atol=1e-5, rtol=1e-5)
    anchored = _inferer(init="anchor", t_start=500, anchor_weight=0.3)
    torch.testing.assert_close(anchored(images, exported), anchored(images, net), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        cond = net.encode_condition(images)
        torch.testing.assert_close(exported.anchor(exported.encode_condition(images)), net.anchor(cond))
        # the member tiling and scalar timestep of MedSegDiff.forward
        x_t = torch.randn(6, out_channels, 32, 32)
        torch.testing.assert_close(
            exported(x_t, torch.tensor(300), condition=cond), net(x_t, torch.tensor(300), condition=cond)
        )


def test_torchscript_3d_and_self_condition(tmp_path) -> None:
    net = _net(spatial_dims=3, self_condition=True, anchor_head=False)
    exported = ExportedMedSegDiff(export_medsegdiff(net, tmp_path / "model.ts", (8, 8, 12))[0])
    assert exported.self_condition and exported.anchor_head is None
    images = torch.rand(2, 3, 8, 8, 12)
    inferer = _inferer()
    torch.testing.assert_close(inferer(images, exported), inferer(images, net), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="without an anchor head"):
        exported.anchor(exported.encode_condition(images))


def test_exported_input_errors(tmp_path) -> None:
    net = _net()
    exported = ExportedMedSegDiff(export_medsegdiff(net, tmp_path / "model.ts", (32, 32))[0])
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, 32, 32\).*--spatial_shape"):
        exported.encode_condition(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of the condition's batch"):
        exported(
            torch.rand(3, 1, 32, 32), torch.tensor(3), condition=exported.encode_condition(torch.rand(2, 3, 32, 32))
        )
    exported.description["device"] = "cuda"  # a TorchScript traced on the GPU keeps its device
    with pytest.raises(RuntimeError, match="traced on cuda and cannot run on cpu; export it on that device"):
        exported.encode_condition(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="must end with .ts"):
        ExportedMedSegDiff(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="python -m monai_diffseg.export"):
        ExportedMedSegDiff(tmp_path / "missing.ts")
    with pytest.raises(ValueError, match="size"):
        export_medsegdiff(net, tmp_path / "odd.ts", (30, 30))  # not divisible by the network's size_divisor


def test_torchscript_keeps_bundle_files(tmp_path) -> None:
    config = json.dumps({"image_size": [32, 32]})
    path = export_medsegdiff(_net(), tmp_path / "m.ts", (32, 32), more_extra_files={"inference.json": config})[0]
    assert json.loads(ExportedMedSegDiff(path).extra_files["inference.json"]) == {"image_size": [32, 32]}


@pytest.mark.slow  # the dynamo ONNX exporter takes ~20 s per graph on 2 CPU cores
@pytest.mark.skipif(not (has_ort and has_onnxscript), reason="onnxruntime/onnxscript not installed (export extra)")
def test_onnx_runtime_sampler_equals_eager(tmp_path) -> None:
    net = _net(out_channels=2)
    written = export_medsegdiff(
        net, tmp_path / "model.onnx", (32, 32), "onnx", more_extra_files={"inference.json": "{}"}
    )
    assert written == list(onnx_part_paths(tmp_path / "model.onnx").values())
    exported = ExportedMedSegDiff(written[0])
    assert exported.format == "onnx" and exported.extra_files["inference.json"] == "{}"
    images = torch.rand(3, 3, 32, 32)
    inferer = _inferer(init="anchor", t_start=700)
    torch.testing.assert_close(inferer(images, exported), inferer(images, net), atol=2e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(
            exported.anchor(exported.encode_condition(images)),
            net.anchor(net.encode_condition(images)),
            atol=1e-4,
            rtol=1e-4,
        )
