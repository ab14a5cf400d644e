# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Shared by the torchrun tests: a bundle's configs through ``torchrun -m monai.bundle run`` on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bundle_utils import ROOT

TORCHRUN_TIMEOUT_S = 420


def torchrun_bundle(
    bundle: str, configs: list[str], overrides: dict[str, Any], workdir: Path, nproc: int = 2, **cli: str
) -> str:
    """
    Run ``bundles/<bundle>/configs/<configs...>`` + a JSON of ``overrides`` (written to ``workdir``) with
    ``torchrun --standalone --nproc_per_node=<nproc>`` (a free rendezvous port on localhost; on a machine without GPUs
    the multi-GPU configs use gloo and the CPU). ``cli``: further ``--key value`` arguments of ``monai.bundle run``.
    Returns the combined output; a non-zero exit or a run longer than :data:`TORCHRUN_TIMEOUT_S` fails with its tail.
    """
    folder = ROOT / "bundles" / bundle / "configs"
    extra = workdir / f"overrides_{len(list(workdir.glob('overrides_*.json')))}.json"
    extra.write_text(json.dumps(overrides))
    files = [str(folder / c) for c in configs] + [str(extra)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "monai.bundle", "run",
        "--config_file", repr(files),
        "--meta_file", str(folder / "metadata.json"),
        "--logging_file", str(folder / "logging.conf"),
    ]  # fmt: skip
    for key, value in cli.items():
        command += [f"--{key}", value]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, check=False
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"torchrun exited with {proc.returncode}:\n{output[-6000:]}")
    return output
