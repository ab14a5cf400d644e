# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for monai_diffseg.handlers.RandomStateHandler."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism

from monai_diffseg.handlers import RandomStateHandler


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _draw() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def _loader(generator: torch.Generator | None = None) -> DataLoader:
    """A MONAI pipeline as in the bundles: random augmentations run in the main process (num_workers=0)."""
    data = [{"image": torch.arange(16.0).reshape(1, 4, 4) + 100 * i} for i in range(6)]
    transform = Compose(
        [
            RandFlipd("image", prob=0.5, spatial_axis=0),
            RandAffined("image", prob=0.5, rotate_range=0.5, padding_mode="zeros"),
            RandGaussianNoised("image", prob=0.5),
        ]
    )
    return DataLoader(Dataset(data, transform), batch_size=2, shuffle=True, num_workers=0, generator=generator)


def _epoch(loader: DataLoader) -> list[torch.Tensor]:
    return [batch["image"].as_tensor().clone() for batch in loader]


def _same_batches(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_global_generators_round_trip(tmp_path: Path) -> None:
    handler = RandomStateHandler()
    _seed(1)
    _draw()
    torch.save(handler.state_dict(), tmp_path / "rng.pt")
    expected = _draw()
    _seed(2)
    assert _draw() != expected
    handler.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))  # tensors and numbers only
    assert _draw() == expected


def test_gaussian_cache_of_numpy_restored() -> None:
    handler = RandomStateHandler()
    np.random.seed(0)
    np.random.standard_normal()  # leaves the second Box-Muller value cached
    state = handler.state_dict()
    expected = np.random.standard_normal(3)
    np.random.standard_normal(5)
    handler.load_state_dict(state)
    np.testing.assert_array_equal(np.random.standard_normal(3), expected)


@pytest.mark.parametrize("with_generator", [False, True])
def test_data_pipeline_continues_after_a_restart(with_generator: bool) -> None:
    """A fresh process rebuilds the loader (same seeds), loads the state: its next epoch is the uninterrupted one's."""

    def build() -> DataLoader:
        set_determinism(seed=0)
        return _loader(torch.Generator().manual_seed(5) if with_generator else None)

    loader = build()
    handler = RandomStateHandler(sources=loader)
    _epoch(loader)
    state = handler.state_dict()  # the checkpoint at the end of epoch 1
    expected = [_epoch(loader), _epoch(loader)]

    restarted = build()
    assert not _same_batches(_epoch(build()), expected[0])  # without the state: epoch 1's batches again
    RandomStateHandler(sources=[restarted]).load_state_dict(state)
    assert _same_batches(_epoch(restarted), expected[0]) and _same_batches(_epoch(restarted), expected[1])


def test_transform_states_are_needed() -> None:
    """With num_workers=0 the global generators alone do not continue the augmentations: the transforms' own do."""
    set_determinism(seed=0)
    loader = _loader()
    _epoch(loader)
    state = RandomStateHandler().state_dict()  # globals only
    expected = _epoch(loader)
    set_determinism(seed=0)
    restarted = _loader()
    RandomStateHandler().load_state_dict(state)
    assert not _same_batches(_epoch(restarted), expected)


def test_generators_found_by_path() -> None:
    gen = torch.Generator()
    loader = _loader(gen)
    found = RandomStateHandler(sources=[loader]).generators()
    assert [p for p, g in found.items() if g is gen] == ["sources.0.sampler.generator"]  # loader's too: listed once
    transforms = loader.dataset.transform.transforms
    assert found["sources.0.dataset.transform.transforms.1.rand_affine.rand_affine_grid.R"] is (
        transforms[1].rand_affine.rand_affine_grid.R
    )
    assert all(isinstance(g, (np.random.RandomState, torch.Generator)) for g in found.values())


def test_changed_pipeline_warns() -> None:
    state = RandomStateHandler(sources=_loader()).state_dict()
    other = DataLoader(Dataset([{"image": torch.zeros(1, 4, 4)}], RandFlipd("image", prob=0.5)), batch_size=1)
    with pytest.warns(UserWarning, match="not repeat an uninterrupted run"):
        RandomStateHandler(sources=other).load_state_dict(state)


def test_wrong_state_dict() -> None:
    with pytest.raises(ValueError, match="expects {'ranks'"):
        RandomStateHandler().load_state_dict({"torch": torch.get_rng_state()})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(10 + rank)  # every rank has its own stream
        handler = RandomStateHandler()
        state = handler.state_dict()  # collective, as ignite's Checkpoint calls it on every rank
        expected = torch.rand(3)
        torch.manual_seed(99)
        handler.load_state_dict(state)
        torch.save({"state": state, "expected": expected, "again": torch.rand(3)}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_keep_their_own_states(tmp_path: Path) -> None:
    mp.spawn(_distributed_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["state"]["ranks"]) == 2
    assert torch.equal(r0["state"]["ranks"][1]["torch"], r1["state"]["ranks"][1]["torch"])
    assert not torch.equal(r0["state"]["ranks"][0]["torch"], r0["state"]["ranks"][1]["torch"])
    for r in (r0, r1):
        assert torch.equal(r["again"], r["expected"])
    assert not torch.equal(r0["expected"], r1["expected"])


def test_cuda_states_saved_and_restored_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch, on a CPU-only machine: per-device states are saved when CUDA is in use and set back."""
    states = [torch.full((8,), 1, dtype=torch.uint8), torch.full((8,), 2, dtype=torch.uint8)]
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s))
    state = RandomStateHandler().state_dict()
    assert [torch.equal(a, b) for a, b in zip(state["ranks"][0]["cuda"], states)] == [True, True]
    with pytest.warns(UserWarning, match="2 CUDA generator states, this machine has 1 GPUs"):
        RandomStateHandler().load_state_dict(state)
    assert list(restored) == [0] and torch.equal(restored[0], states[0])
