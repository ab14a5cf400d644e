# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Shared by the bundle tests: a bundle's configs through MONAI's ConfigWorkflow, and tiny-network overrides."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[1]

# small and fast: a tiny network (32x32 inputs in 2D, 16^3 patches in 3D), identical in train and inference
_TINY_MEDSEGDIFF: dict = {
    "network_def#channels": [8, 16],
    "network_def#cond_channels": [8, 16],
    "network_def#norm_num_groups": 4,
    "num_workers": 0,
}
_TINY_2D: dict = {**_TINY_MEDSEGDIFF, "image_size": [32, 32]}
TINY_NETWORKS: dict[str, dict] = {
    "medsegdiff_isic2018": dict(_TINY_2D),
    "diffseg_isic2018": {"image_size": [32, 32], "channels": [8, 16], "num_workers": 0},
    "medsegdiff_polyp": dict(_TINY_2D),
    "medsegdiff_multirater": dict(_TINY_2D),
    "medsegdiff_thyroid_ddti": dict(_TINY_2D),
    "medsegdiff_fundus_disc_cup": dict(_TINY_2D),
    "medsegdiff_brats": {**_TINY_MEDSEGDIFF, "roi_size": [16, 16, 16]},
}


def bundle_workflow(bundle: str, config: str | list[str], workflow_type: str, **override) -> ConfigWorkflow:
    """``ConfigWorkflow`` over ``bundles/<bundle>/configs/<config>`` (one file or a list, merged in order)."""
    folder = ROOT / "bundles" / bundle / "configs"
    files = [str(folder / c) for c in ([config] if isinstance(config, str) else config)]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(folder / "metadata.json"),
        logging_file=str(folder / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )


@contextlib.contextmanager
def single_process_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """
    The torchrun environment of one process (rank 0 of 1, a free port), so a multi-GPU config builds its process group
    (gloo on the CPU) inside this pytest process; on exit the group is destroyed and ignite's cached distributed
    context reset: ignite keeps the native model it found while the group existed, and every later metric sync in
    this pytest process would call into the destroyed group ("Default process group has not been initialized").
    """
    import torch.distributed as dist
    from ignite.distributed import utils as idist_utils

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "RANK": 0,
        "LOCAL_RANK": 0,
        "WORLD_SIZE": 1,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }.items():
        monkeypatch.setenv(key, str(value))
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        idist_utils._set_model(idist_utils._SerialModel())
