# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
``torchrun`` helpers for the bundles' ``multi_gpu_*.json``: the rank's device (CUDA per ``LOCAL_RANK``, CPU when there
is no GPU), the process group (NCCL on CUDA, gloo on CPU), ``DistributedDataParallel`` with the device ids the device
needs, and rank-0-only handler lists. Without ``torchrun``'s environment (no ``WORLD_SIZE``) no process group is made:
the device and network helpers fall back to a single process (the inference configs then run as a plain
``python -m monai.bundle run``; ``multi_gpu_train.json``'s ``DistributedSampler`` needs ``torchrun``, with
``--nproc_per_node=1`` for one process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["distributed_device", "init_distributed", "distributed_network", "on_rank_zero", "rank", "world_size"]


def rank() -> int:
    """This process's global rank: the process group's, else ``RANK`` (torchrun), else 0."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Number of processes: the process group's, else ``WORLD_SIZE`` (torchrun), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def distributed_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (one GPU per process, as torchrun starts them), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): start at most that many "
            "processes per node (torchrun --nproc_per_node)."
        )
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device | str | None = None, timeout_s: float = 1800.0) -> bool:
    """
    Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL for a
    CUDA ``device`` (made the current device), gloo otherwise. Idempotent; without ``WORLD_SIZE`` (not started by
    torchrun) nothing happens and the run is a single process.

    Args:
        device: this rank's device (:func:`distributed_device`); ``None``: :func:`distributed_device`.
        timeout_s: collective timeout (a rank waiting at a barrier longer than this fails instead of hanging).

    Returns:
        whether a process group is initialized.
    """
    device = torch.device(device) if device is not None else distributed_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def distributed_network(network: nn.Module, device: torch.device | str, **kwargs: Any) -> nn.Module:
    """
    ``network`` on ``device``, wrapped in ``DistributedDataParallel`` when a process group exists (``device_ids``
    for a CUDA device, none for the CPU, as DDP requires); the plain network in a single process.

    Args:
        network: the model.
        device: this rank's device.
        kwargs: other ``DistributedDataParallel`` arguments (e.g. ``find_unused_parameters``).
    """
    device = torch.device(device)
    network = network.to(device)
    if not (dist.is_available() and dist.is_initialized()):
        return network
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=ids, output_device=ids[0] if ids else None, **kwargs)


def on_rank_zero(items: Sequence[Any] | None) -> list[Any]:
    """``items`` (e.g. logging, TensorBoard or checkpoint-saving handlers) on rank 0 or in a single process, ``[]`` on
    the other ranks, so only one process writes logs and files."""
    return list(items or []) if rank() == 0 else []
