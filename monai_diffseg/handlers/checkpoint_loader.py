# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""``CheckpointLoader`` that checks network keys and shapes first and can skip a checkpoint that does not exist."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn as nn
from monai.handlers import CheckpointLoader
from monai.networks.utils import copy_model_state
from monai.utils import IgniteInfo, min_version, optional_import

from monai_diffseg.networks.utils import check_state_dict, read_checkpoint
from monai_diffseg.utils import unwrap_network

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
Checkpoint, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Checkpoint")

__all__ = ["CheckedCheckpointLoader"]


class CheckedCheckpointLoader(CheckpointLoader):
    """
    :class:`monai.handlers.CheckpointLoader` that validates every network in ``load_dict`` against the checkpoint
    before loading, and optionally tolerates a missing checkpoint (resume-if-present).

    Instead of ``load_state_dict``'s hundreds of key names for a checkpoint of another configuration, one
    ``ValueError`` names the path, the network class and the first mismatches
    (:func:`monai_diffseg.networks.utils.check_state_dict`). The checkpoint is read once, with ``weights_only=True``
    (:func:`~monai_diffseg.networks.utils.read_checkpoint`). ``strict_shape=False`` (load the layers whose name and
    shape fit, networks only) is done here: MONAI 1.6.1's ``CheckpointLoader`` passes the whole checkpoint instead of
    ``checkpoint[key]`` to ``copy_model_state`` and silently loads nothing (MONAI issue #2506).

    Resuming a trainer (the engine is in ``load_dict``) from a checkpoint already at ``max_epochs`` logs a warning
    saying how to train further (``--<epochs_key> N``) or start over (``--resume false``) instead of an empty run; a
    checkpoint beyond ``max_epochs`` raises a ``ValueError`` saying the same.

    Usage (bundle ``train#handlers``)::

        {"_target_": "monai_diffseg.handlers.CheckedCheckpointLoader", "load_path": "$@ckpt_dir + '/last.pt'",
         "load_dict": {"model": "@network", "optimizer": "@optimizer", "trainer": "@trainer"}, "optional": true}

    Args:
        load_path: checkpoint file.
        load_dict: objects to load into, e.g. ``{"model": net, "optimizer": opt}``.
        name: logger name; ``None`` uses the engine's logger.
        map_location: ``torch.load``'s ``map_location``.
        strict: require the same key set (shapes are checked in any case).
        strict_shape: ``False`` loads only the network layers whose names and shapes match (transfer learning) and
            skips the non-network objects; no validation is made then.
        optional: when ``load_path`` does not exist, log it and skip loading instead of raising (resume a training
            if a checkpoint exists, else start fresh).
        epochs_key: the bundle config key that sets the trainer's ``max_epochs``, named in the messages about a
            finished run (``--num_epochs N``).
        total_epochs: the configured length of the whole training (the bundle's ``num_epochs``), for a trainer in
            ``load_dict``. ``None`` or equal to the trainer's ``max_epochs``: ``max_epochs`` is the total, a resumed
            run continues up to it (above). A trainer whose ``max_epochs`` differs from it was given the length of
            this run instead (MONAI Label's ``/train`` sets ``train#trainer#max_epochs`` to the requested epochs): the
            resumed run trains ``max_epochs`` **more** epochs after the checkpoint's, so every request trains what
            it asks for (``resume`` would otherwise make a request after a finished one train nothing).
        fresh_per_run: ``load_dict`` entries not restored when a run trains ``max_epochs`` more epochs (see
            ``total_epochs``), e.g. the best-model record (``"best_model_saver"``): a new request is scored on its
            own validation data, so its first validation writes ``model.pt``.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: dict,
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
        strict_shape: bool = True,
        optional: bool = False,
        epochs_key: str = "num_epochs",
        total_epochs: int | None = None,
        fresh_per_run: Sequence[str] = (),
    ) -> None:
        path = os.fspath(load_path) if load_path is not None else load_path
        super().__init__(path, load_dict, name, map_location, strict, strict_shape)  # type: ignore[arg-type]
        self.optional, self.epochs_key = optional, epochs_key
        self.total_epochs = None if total_epochs is None else int(total_epochs)
        unknown = [k for k in fresh_per_run if k not in load_dict]
        if unknown:
            raise ValueError(f"fresh_per_run {unknown} are not keys of load_dict {list(load_dict)}.")
        self.fresh_per_run = list(fresh_per_run)

    def validate(self, checkpoint: dict | None = None) -> dict:
        """
        Check every ``torch.nn.Module`` of ``load_dict`` against ``checkpoint`` (``{load_dict key: state}``; ``None``
        reads ``load_path``) and return it. Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an
        unreadable checkpoint, no entry for a network, or a key/shape mismatch.
        """
        checkpoint = self._entries() if checkpoint is None else checkpoint
        for k, obj in self.load_dict.items():
            if isinstance(obj, nn.Module):
                check_state_dict(unwrap_network(obj), checkpoint[k], self.load_path, strict=self.strict)
        return checkpoint

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            if self.optional:
                self.logger.info(f"No checkpoint at '{self.load_path}' (optional=True): starting without loading.")
                return
            raise FileNotFoundError(
                f"checkpoint file '{self.load_path}' does not exist (set optional=True to skip a missing checkpoint)."
            )
        if not self.strict_shape:  # load the network layers whose names and shapes match: nothing to validate
            checkpoint = self._entries()
            to_load = {}
            for k, obj in self.load_dict.items():
                if not isinstance(obj, nn.Module):
                    warnings.warn(
                        f"`strict_shape` is False: loading networks only, skipping '{k}' of `load_dict`.", stacklevel=2
                    )
                    continue
                checkpoint[k], updated, _ = copy_model_state(obj, checkpoint[k], inplace=False)
                self.logger.info(
                    f"'{k}': {len(updated)} of {len(checkpoint[k])} tensors restored from {self.load_path}"
                )
                to_load[k] = obj
            Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint, strict=False)
            return
        checkpoint = self.validate()
        # as the parent's __call__, on the checkpoint read (and checked) once: keep this run's max_epochs
        prior_max_epochs = engine.state.max_epochs
        is_trainer = any(obj is engine for obj in self.load_dict.values())
        per_run = (
            is_trainer
            and self.total_epochs is not None
            and prior_max_epochs is not None
            and prior_max_epochs != self.total_epochs
        )
        to_load = {k: v for k, v in self.load_dict.items() if not (per_run and k in self.fresh_per_run)}
        Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint, strict=self.strict)
        resumed = engine.state.epoch
        if per_run:
            engine.state.max_epochs = resumed + prior_max_epochs
            self.logger.info(
                f"Restored {list(to_load)} from {self.load_path} at epoch {resumed}; max_epochs={prior_max_epochs} "
                f"differs from the configured total ({self.epochs_key}={self.total_epochs}): training "
                f"{prior_max_epochs} more epochs, to epoch {resumed + prior_max_epochs}"
                + (f" ({self.fresh_per_run} start fresh)." if self.fresh_per_run else ".")
            )
            return
        engine.state.max_epochs = prior_max_epochs
        if prior_max_epochs is not None and resumed > prior_max_epochs:
            raise ValueError(
                f"checkpoint '{self.load_path}' is at epoch {resumed}, beyond max_epochs={prior_max_epochs} of this "
                f"run. To train further, set max_epochs above {resumed} (bundle: --{self.epochs_key} N); to start "
                "over, do not resume (bundle: --resume false) or delete the checkpoint."
            )
        self.logger.info(f"Restored all variables from {self.load_path}")
        if is_trainer and prior_max_epochs is not None and resumed == prior_max_epochs:
            self.logger.warning(
                f"Training is already complete: checkpoint '{self.load_path}' is at epoch {resumed} of "
                f"max_epochs={prior_max_epochs}, so this run trains nothing. To train further, raise the number of "
                f"epochs (bundle: --{self.epochs_key} N with N > {resumed}); to start over, do not resume (bundle: "
                "--resume false) or delete the checkpoint."
            )

    def _entries(self) -> dict:
        """The checkpoint as ``{load_dict key: state}``, checking that every network has an entry."""
        checkpoint = read_checkpoint(self.load_path, map_location=self.map_location)
        items = list(self.load_dict.items())
        if len(items) == 1 and isinstance(checkpoint, dict) and items[0][0] not in checkpoint:
            checkpoint = {items[0][0]: checkpoint}  # single object saved as a raw state dict, as the parent handles
        if not isinstance(checkpoint, dict):
            raise ValueError(
                f"checkpoint '{self.load_path}' holds a {type(checkpoint).__name__}, expected a dict of state dicts."
            )
        for k, obj in items:
            if isinstance(obj, nn.Module) and k not in checkpoint:
                raise ValueError(
                    f"checkpoint '{self.load_path}' has no entry '{k}' for the network "
                    f"{type(unwrap_network(obj)).__name__}; its entries are {list(checkpoint.keys())[:10]}. The "
                    "load_dict keys must match the save_dict keys used by CheckpointSaver."
                )
        missing = [k for k, obj in items if not isinstance(obj, nn.Module) and k not in checkpoint]
        if missing and self.strict and self.strict_shape:
            raise ValueError(
                f"checkpoint '{self.load_path}' has no entries {missing} for objects of load_dict (its entries are "
                f"{list(checkpoint.keys())[:10]}): was it written by an older version or another configuration? "
                "To start over, do not resume (bundle: --resume false) or delete the checkpoint."
            )
        return checkpoint
