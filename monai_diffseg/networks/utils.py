# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Checked loading of network weights: clear errors instead of ``load_state_dict``'s wall of key names."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.config import PathLike
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from monai_diffseg.utils import unwrap_network

__all__ = [
    "load_network_weights",
    "read_checkpoint",
    "extract_state_dict",
    "check_state_dict",
    "state_dict_mismatch_message",
]

_DDP_PREFIX = "module."
_SHOW = 5


def read_checkpoint(path: PathLike, map_location: Any = "cpu", trusted: bool = False) -> Any:
    """
    ``torch.load`` a checkpoint file with ``weights_only=True``, turning failures into clear errors. A file that
    stores Python objects other than tensors and containers (a pickled ``argparse.Namespace``, a whole network ...)
    is refused: full unpickling can run arbitrary code hidden in the file.

    Args:
        path: checkpoint file.
        map_location: passed to ``torch.load``.
        trusted: for a file from a source you trust: when the safe load fails with an unpickling error, warn and
            retry with ``weights_only=False``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a PyTorch checkpoint, or it needs full unpickling and ``trusted`` is
            ``False`` (naming the path and the fix).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as safe_err:
        if not trusted:
            raise ValueError(
                f"checkpoint '{path}' was refused by torch.load(weights_only=True): it is corrupt or stores Python "
                f"objects other than tensors and containers ({str(safe_err).strip().splitlines()[0]}). Loading it "
                "fully would unpickle those objects, which can run arbitrary code. If you trust the file's source, "
                "pass trusted=True (e.g. load_network_weights(net, path, trusted=True)); better, re-save only the "
                "state dict once: torch.save(network.state_dict(), 'weights.pt')."
            ) from safe_err
        warnings.warn(
            f"checkpoint '{path}': loading with torch.load(weights_only=False) because trusted=True; full unpickling "
            "can run arbitrary code stored in the file. Re-save the state dict alone to avoid it.",
            stacklevel=2,
        )
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:
            raise ValueError(_corrupt_message(path, err)) from err
    except Exception as err:  # zip/stream errors, EOFError ... from a truncated or non-PyTorch file
        raise ValueError(_corrupt_message(path, err)) from err


def _corrupt_message(path: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"checkpoint '{path}' is not a readable PyTorch checkpoint (corrupt or truncated file?): {first}"


def extract_state_dict(checkpoint: Any, key: str | None = "model", source: str = "<checkpoint>") -> Mapping[str, Any]:
    """
    The network state dict inside a loaded checkpoint: a raw state dict (``torch.save(net.state_dict())``, MONAI
    ``CheckpointSaver`` with a one-entry ``save_dict``) or a dict holding it under ``key`` (several entries;
    ``None`` requires a raw state dict). Raises a ``ValueError`` naming ``source`` (the checkpoint's path), ``key``
    and the checkpoint's top-level keys when there is none.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint '{source}' holds a {type(checkpoint).__name__}, expected a state dict or a dict of state "
            "dicts (did you torch.save the whole network instead of network.state_dict()?)."
        )
    if key is not None and key in checkpoint and isinstance(checkpoint[key], Mapping):
        return checkpoint[key]
    if len(checkpoint) > 0 and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):  # a raw state dict
        return checkpoint
    keys = list(checkpoint.keys())
    shown = ", ".join(repr(k) for k in keys[:10]) + (" ..." if len(keys) > 10 else "")
    where = f"no entry '{key}' and it is not a raw state dict" if key is not None else "it is not a raw state dict"
    raise ValueError(
        f"checkpoint '{source}': {where}; its top-level keys are [{shown}]. Pass the key that holds the network's "
        "state dict (`key=`)."
    )


def _optional_key(network: nn.Module, key: str) -> bool:
    """Whether the module owning ``key`` fills it in itself when a checkpoint lacks it (``optional_state_keys``)."""
    owner, _, name = key.rpartition(".")
    try:
        module = network.get_submodule(owner) if owner else network
    except AttributeError:
        return False
    return name in getattr(module, "optional_state_keys", ())


def state_dict_mismatch_message(
    network: nn.Module, state_dict: Mapping[str, Any], source: str, strict: bool = True
) -> str | None:
    """
    The message listing the missing/unexpected keys and shape mismatches of ``state_dict`` (a checkpoint's, named
    ``source``) against ``network.state_dict()``, or ``None`` when they are compatible. ``strict=False`` reports
    shape mismatches only (``load_state_dict`` refuses those either way). Keys a module lists in its
    ``optional_state_keys`` (it fills them in itself) may be missing.
    """
    own = network.state_dict()
    missing = [k for k in own if k not in state_dict and not _optional_key(network, k)] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    shapes = []
    for k, v in state_dict.items():
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape):
            shapes.append(f"'{k}': checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}")
    if not (missing or unexpected or shapes):
        return None
    lines = [f"checkpoint '{source}' does not match the network {type(network).__name__}:"]
    for what, items in (
        ("missing key(s) (in the network, not the checkpoint)", [repr(k) for k in missing]),
        ("unexpected key(s) (in the checkpoint, not the network)", [repr(k) for k in unexpected]),
        ("shape mismatch(es)", shapes),
    ):
        if items:
            shown = ", ".join(items[:_SHOW]) + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")
            lines.append(f"  {len(items)} {what}: {shown}")
    if unexpected and all(k.startswith(_DDP_PREFIX) for k in unexpected):
        lines.append(
            "The checkpoint keys carry a 'module.' prefix (saved from a DataParallel/DistributedDataParallel "
            "wrapper): save network.module.state_dict(), or load with monai_diffseg.networks.utils."
            "load_network_weights, which strips it."
        )
    lines.append(
        "Was it trained with a different network_def, e.g. other channels/num_classes/in_channels, or is it the "
        "checkpoint of another model?"
    )
    return "\n".join(lines)


def check_state_dict(network: nn.Module, state_dict: Mapping[str, Any], source: str, strict: bool = True) -> None:
    """Raise one clear ``ValueError`` unless ``state_dict`` fits ``network`` (:func:`state_dict_mismatch_message`)."""
    msg = state_dict_mismatch_message(network, state_dict, source, strict=strict)
    if msg is not None:
        raise ValueError(msg)


def load_network_weights(
    network: nn.Module,
    path: PathLike,
    map_location: Any = "cpu",
    key: str | None = "model",
    strict: bool = True,
    trusted: bool = False,
) -> nn.Module:
    """
    Load a checkpoint's weights into ``network`` (``load_network_weights(net, "runs/model_final.pt")``): read with
    :func:`read_checkpoint`, the state dict found by :func:`extract_state_dict`, a ``module.`` prefix left by
    ``DataParallel`` / ``DDP`` stripped, keys and shapes checked by :func:`check_state_dict` before
    ``load_state_dict``.

    Args:
        network: the network to load into (a ``DataParallel``/``DDP`` wrapper is unwrapped).
        path: the checkpoint file.
        map_location: ``torch.load``'s ``map_location``.
        key: entry of the checkpoint dict holding the state dict; ``None`` for a raw state dict only.
        strict: require exactly the network's keys (shapes must match in any case).
        trusted: see :func:`read_checkpoint`.

    Returns:
        ``network``, with the weights loaded; the errors are those of the three functions named above.
    """
    source = os.fspath(path)
    checkpoint = read_checkpoint(source, map_location=map_location, trusted=trusted)
    target = unwrap_network(network)
    state_dict = dict(extract_state_dict(checkpoint, key=key, source=source))
    if not any(k.startswith(_DDP_PREFIX) for k in target.state_dict()):  # unless the network's own keys carry it
        consume_prefix_in_state_dict_if_present(state_dict, _DDP_PREFIX)
    check_state_dict(target, state_dict, source, strict=strict)
    target.load_state_dict(state_dict, strict=strict)
    return network
