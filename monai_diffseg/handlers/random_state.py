# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Random number generator states as a checkpointable object: a resumed training equals one that never stopped."""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.transforms import Randomizable, Transform
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["RandomStateHandler"]

# objects whose attributes are searched for generators (lists, tuples and dicts are searched too)
_SEARCHED = (DataLoader, Dataset, Sampler, Transform, Randomizable)
_SHOW = 5


def _numpy_state(legacy: tuple) -> dict[str, Any]:
    """``RandomState.get_state()``'s tuple as tensors and numbers (``weights_only=True`` loading refuses arrays)."""
    name, keys, pos, has_gauss, gauss = legacy
    if name != "MT19937":
        raise ValueError(f"unsupported numpy bit generator '{name}' (expected MT19937).")
    keys = torch.from_numpy(keys.astype(np.int64))
    return {"keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    """The inverse of :func:`_numpy_state`: the tuple ``RandomState.set_state`` takes."""
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["gauss"]))


def _find_generators(obj: Any, path: str, found: dict[str, Any], seen: set[int]) -> None:
    """Collect every ``np.random.RandomState`` and ``torch.Generator`` reachable from ``obj`` by attribute path."""
    if id(obj) in seen:
        return
    if isinstance(obj, (np.random.RandomState, torch.Generator)):
        found[path], children = obj, []
    elif isinstance(obj, Mapping):
        children = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        children = list(enumerate(obj))
    elif isinstance(obj, _SEARCHED):
        children = [(k, v) for k, v in vars(obj).items() if not k.startswith("__")]
    else:
        return
    seen.add(id(obj))
    for k, v in children:
        _find_generators(v, f"{path}.{k}", found, seen)


class RandomStateHandler:
    """
    The random number generator states of a training run as one object with ``state_dict()`` /
    ``load_state_dict()``: put it in the ``save_dict`` of the interval :class:`AtomicCheckpointSaver` and the
    ``load_dict`` of :class:`CheckedCheckpointLoader`, and a resumed run draws the same random numbers as a run that
    never stopped (bit-identical weights on CPU). Saved: torch's CPU generator (prepare-batch noise and timesteps,
    ``DataLoader`` shuffling and worker seeds), the CUDA generators in use, numpy's and python's global generators,
    and every ``np.random.RandomState`` / ``torch.Generator`` reachable from ``sources`` (a ``DataLoader``'s and its
    sampler's ``generator``, the ``R`` of every MONAI ``Randomizable`` transform: with ``num_workers=0`` the
    augmentations draw from these). ``persistent_workers=True`` keeps the workers' states out of reach, so a resumed
    run then differs. Generators are found again at every save and load and matched by attribute path (e.g.
    ``sources.0.dataset.transform.transforms.5.R``); a path on one side only is reported with a warning and keeps its
    fresh state. Under ``torch.distributed``, ``state_dict`` gathers every rank's states (a collective) and
    ``load_state_dict`` restores each rank's own.

    The states are tensors and numbers, so the checkpoint loads with ``torch.load(weights_only=True)``. Usage
    (bundle ``train.json``; ``"random_states": "@train#random_states"`` in the saver's and loader's dicts)::

        "train#random_states": {"_target_": "monai_diffseg.handlers.RandomStateHandler",
                                "sources": ["@train#dataloader"]}

    Args:
        sources: objects (or a list of them) whose own generators are saved too: ``DataLoader``, ``Dataset``,
            samplers, transforms. ``None``: global generators only.
    """

    def __init__(self, sources: Any = None) -> None:
        self.sources = [] if sources is None else list(sources) if isinstance(sources, (list, tuple)) else [sources]

    def generators(self) -> dict[str, np.random.RandomState | torch.Generator]:
        """The generators reachable from ``sources``, keyed by attribute path (``sources.<i>.<attr>...``)."""
        found: dict[str, Any] = {}
        _find_generators(self.sources, "sources", found, set())
        return found

    def state_dict(self) -> dict[str, Any]:
        """``{"ranks": [state of rank 0, ...]}`` (one entry without ``torch.distributed``), each state holding
        ``torch``, ``cuda``, ``numpy``, ``python`` and ``generators``."""
        gens = {}
        for path, g in self.generators().items():
            gens[path] = {"torch": g.get_state()} if isinstance(g, torch.Generator) else _numpy_state(g.get_state())
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        local = {
            "torch": torch.get_rng_state(),
            "cuda": cuda,
            "numpy": _numpy_state(np.random.get_state()),
            "python": random.getstate(),
            "generators": gens,
        }
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)
            return {"ranks": ranks}
        return {"ranks": [local]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the generators from :meth:`state_dict`'s output (this rank's entry); ``ValueError`` for another
        format."""
        if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("ranks"), (list, tuple)):
            got = f"keys {list(state_dict)[:5]}" if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(
                f"RandomStateHandler.load_state_dict expects {{'ranks': [...]}} as written by state_dict(), got {got}."
            )
        ranks = state_dict["ranks"]
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if len(ranks) != world:
            warnings.warn(
                f"the checkpoint holds the random states of {len(ranks)} process(es) but this run has {world}: "
                f"rank {rank} restores those of rank {rank % len(ranks)}, so the resumed run will not repeat an "
                "uninterrupted run exactly.",
                stacklevel=2,
            )
        state = ranks[rank % len(ranks)]
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            cuda = [s.cpu() for s in state["cuda"]]
            n = torch.cuda.device_count()
            if len(cuda) != n:
                warnings.warn(
                    f"the checkpoint holds {len(cuda)} CUDA generator states, this machine has {n} GPUs.", stacklevel=2
                )
            for i, s in enumerate(cuda[:n]):
                torch.cuda.set_rng_state(s, device=i)
        np.random.set_state(_numpy_tuple(state["numpy"]))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        saved, current = state["generators"], self.generators()  # generators of the data pipeline, by path
        for path, g in current.items():
            if path not in saved:
                continue
            s = saved[path]
            if isinstance(g, torch.Generator) != ("torch" in s):
                raise ValueError(
                    f"random state '{path}': the checkpoint holds a {'torch' if 'torch' in s else 'numpy'} generator "
                    f"state, the object now has a {type(g).__name__}."
                )
            g.set_state(s["torch"].cpu() if isinstance(g, torch.Generator) else _numpy_tuple(s))
        missing = [p for p in current if p not in saved]
        unused = [p for p in saved if p not in current]
        if missing or unused:
            warnings.warn(
                "the random generators of the data pipeline differ from the checkpoint's (did the transforms or the "
                f"data loader change?): {len(missing)} not in the checkpoint (kept as seeded) {missing[:_SHOW]}, "
                f"{len(unused)} in the checkpoint only (ignored) {unused[:_SHOW]}. The resumed run will not repeat an "
                "uninterrupted run exactly.",
                stacklevel=2,
            )
