# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Export a MedSegDiff bundle's trained network to TorchScript / ONNX:
``python -m monai_diffseg.export --bundle_root bundles/medsegdiff_isic2018 --format torchscript onnx``
writes ``models/model.ts`` and ``models/model.onnx`` (+ ``model.encoder.onnx``, ``model.anchor.onnx``) with the
bundle's ``metadata.json`` and ``inference.json`` inside; load them with
:class:`monai_diffseg.networks.exported.ExportedMedSegDiff`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.config import PathLike

from monai_diffseg.networks.exported import EXPORT_FORMATS, export_medsegdiff
from monai_diffseg.networks.utils import load_network_weights

__all__ = ["export_bundle", "main"]


def export_bundle(
    bundle_root: PathLike,
    export_format: str | Sequence[str] = "torchscript",
    config_file: PathLike = "configs/inference.json",
    meta_file: PathLike = "configs/metadata.json",
    ckpt_file: PathLike | None = None,
    output_dir: PathLike | None = None,
    filename: str = "model",
    spatial_shape: Sequence[int] | None = None,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """
    Build ``network_def`` of the bundle's ``config_file``, load the trained weights and export it with
    :func:`monai_diffseg.networks.exported.export_medsegdiff`.

    Args:
        bundle_root: the bundle folder.
        export_format: ``"torchscript"``, ``"onnx"`` or both (a sequence).
        config_file, meta_file: relative to ``bundle_root`` unless absolute; stored in the export (``inference.json``,
            ``metadata.json``) as ``monai.bundle ckpt_export`` does.
        ckpt_file: the weights (default: the config's ``ckpt_path``, ``models/model.pt``).
        output_dir: where to write (default: ``bundle_root/models``); files ``<filename>.ts`` / ``<filename>.onnx``.
        spatial_shape: the input size the export accepts (default: the config's ``roi_size`` for a sliding-window
            bundle, else its ``image_size``: what the bundle's inferer gives the network).
        batch_size, device: see :func:`export_medsegdiff`; ``device="cuda"`` for a GPU deployment of TorchScript.
        overrides: config entries to set before building (``{"network_def#channels": [8, 16]}``).

    Returns:
        The written files.

    Raises:
        FileNotFoundError: a missing config, metadata or checkpoint file (naming it and how to make it).
        ValueError: no ``network_def``, no spatial size in the config and none given.
    """
    root = os.path.abspath(os.fspath(bundle_root))

    def at_root(path: PathLike) -> str:
        path = os.fspath(path)
        return path if os.path.isabs(path) else os.path.join(root, path)

    config_path, meta_path = at_root(config_file), at_root(meta_file)
    for path, what in ((config_path, "config_file"), (meta_path, "meta_file")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"export_bundle: {what} '{path}' does not exist; is --bundle_root a bundle folder?")
    parser = ConfigParser()
    parser.read_config(config_path)
    parser["bundle_root"] = root
    for key, value in (overrides or {}).items():
        parser[key] = value
    if "network_def" not in parser:
        raise ValueError(f"export_bundle: '{config_path}' has no 'network_def' to export.")
    if spatial_shape is None:
        key = "roi_size" if "roi_size" in parser else "image_size"
        spatial_shape = parser.get_parsed_content(key) if key in parser else None
    if spatial_shape is None:
        raise ValueError(
            f"export_bundle: '{config_path}' has neither roi_size nor image_size; pass spatial_shape (--spatial_shape)."
        )
    ckpt = at_root(ckpt_file) if ckpt_file is not None else os.fspath(parser.get_parsed_content("ckpt_path"))
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(
            f"export_bundle: checkpoint '{ckpt}' does not exist; train the bundle first (configs/train.json writes "
            "models/model.pt) or pass --ckpt_file."
        )
    network = parser.get_parsed_content("network_def")
    load_network_weights(network, ckpt, map_location="cpu")
    with open(meta_path) as f:
        metadata = json.load(f)
    extra = {"inference.json": json.dumps(parser.get(), indent=4)}
    out_dir = os.fspath(output_dir) if output_dir is not None else os.path.join(root, "models")
    formats = [export_format] if isinstance(export_format, str) else list(export_format)
    written: list[str] = []
    for fmt in formats:
        suffix = EXPORT_FORMATS.get(fmt)
        if suffix is None:
            raise ValueError(f"export_bundle: export_format must be one of {tuple(EXPORT_FORMATS)}, got '{fmt}'.")
        written += export_medsegdiff(
            network,
            os.path.join(out_dir, filename + suffix),
            spatial_shape,
            fmt,
            batch_size=batch_size,
            device=device,
            meta_values=metadata,
            more_extra_files=extra,
        )
    return written


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Command line (``argv``, default ``sys.argv[1:]``): export, print and return the written files."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_diffseg.export",
        description="Export a MedSegDiff bundle's condition encoder, anchor head and per-step denoiser to TorchScript "
        "and/or ONNX (models/model.ts, models/model.onnx) for ExportedMedSegDiff.",
    )
    parser.add_argument("--bundle_root", required=True, help="bundle folder, e.g. bundles/medsegdiff_isic2018")
    parser.add_argument("--format", nargs="+", default=["torchscript"], choices=list(EXPORT_FORMATS), dest="fmt")
    parser.add_argument("--config_file", default="configs/inference.json", help="relative to the bundle root")
    parser.add_argument("--meta_file", default="configs/metadata.json", help="relative to the bundle root")
    parser.add_argument("--ckpt_file", default=None, help="default: the config's ckpt_path (models/model.pt)")
    parser.add_argument("--output_dir", default=None, help="default: <bundle_root>/models")
    parser.add_argument("--filename", default="model", help="file name without suffix")
    parser.add_argument("--spatial_shape", type=int, nargs="+", default=None, help="default: roi_size or image_size")
    parser.add_argument("--batch_size", type=int, default=2, help="example batch for tracing (>= 2)")
    parser.add_argument("--device", default="cpu", help="trace on this device (cuda for a GPU TorchScript)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a config entry as the bundle was trained, e.g. --set 'network_def#channels=[8, 16]'",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=JSON, got '{item}'")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare string, e.g. --set noise_schedule=linear_beta
    written = export_bundle(
        args.bundle_root,
        args.fmt,
        config_file=args.config_file,
        meta_file=args.meta_file,
        ckpt_file=args.ckpt_file,
        output_dir=args.output_dir,
        filename=args.filename,
        spatial_shape=args.spatial_shape,
        batch_size=args.batch_size,
        device=args.device,
        overrides=overrides,
    )
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
