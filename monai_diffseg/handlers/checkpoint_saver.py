# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Checkpoint saving with atomic writes (no truncated checkpoint after a crash or a kill mid-write), resumable."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monai.handlers import CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from monai_diffseg.utils import unwrap_network

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
DiskSaver, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "DiskSaver")

__all__ = ["AtomicCheckpointSaver", "FinalModelSaver", "remove_stale_temp_files"]

# ignite's atomic DiskSaver writes to tempfile.NamedTemporaryFile(dir=save_dir): "tmp" + 8 of [a-z0-9_]
_TEMP_NAME = re.compile(r"tmp[a-z0-9_]{8}")


def remove_stale_temp_files(save_dir: str | os.PathLike, logger: logging.Logger | None = None) -> list[str]:
    """
    Delete (and return the paths of) the temporary files ``save_dir/tmpXXXXXXXX`` that ignite's
    ``DiskSaver(atomic=True)`` leaves when the process is killed mid-write: regular files directly in ``save_dir``
    whose whole name matches. Call it when no checkpoint is being written there.

    Args:
        save_dir: the checkpoint folder; a missing folder is not an error.
        logger: where to report the removed files (a warning); ``None`` logs to this module's logger.
    """
    save_dir = os.fspath(save_dir)
    if not os.path.isdir(save_dir):
        return []
    removed = []
    for entry in sorted(os.scandir(save_dir), key=lambda e: e.name):
        if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.remove(entry.path)
            removed.append(entry.path)
    if removed:
        (logger or logging.getLogger(__name__)).warning(
            f"removed {len(removed)} stale temporary checkpoint file(s) left by an interrupted save: {removed}"
        )
    return removed


class AtomicCheckpointSaver(CheckpointSaver):
    """
    MONAI ``CheckpointSaver`` that writes a temporary file in the same folder and moves it into place with
    ``os.replace`` (ignite's atomic mode, which MONAI turns off for ignite < 0.4.11's file permissions), so a
    checkpoint on disk is always complete and a fixed-name file is never missing; and whose best-metric record
    survives a restart: ignite keeps the best key-metric score in memory only, so a resumed run would replace
    ``model.pt`` with a worse model. :meth:`state_dict` / :meth:`load_state_dict` carry that record (and the engine's
    ``best_metric`` / ``best_metric_epoch``): put this saver into the interval saver's ``save_dict`` and the resume
    loader's ``load_dict``. Stale temporary files are deleted at creation (:func:`remove_stale_temp_files`, rank 0).

    Args:
        args: positional arguments of :class:`monai.handlers.CheckpointSaver`.
        interval_filename: fixed file name for the interval checkpoint (e.g. ``"checkpoint_last.pt"``) so that a
            resume step can find it.
        remove_stale_temp: delete stale ``tmpXXXXXXXX`` files in ``save_dir`` at creation.
        kwargs: keyword arguments of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(
        self, *args: Any, interval_filename: str | None = None, remove_stale_temp: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._engine: Engine | None = None
        if interval_filename is not None and self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler.filename = interval_filename
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is None:
                continue
            handler = checkpoint.save_handler
            handler._atomic = True  # ignite DiskSaver's switch for tmp-file + os.replace
            if getattr(handler, "filename", None) is not None:
                handler.remove = lambda filename: None  # the atomic replace already drops the previous file
        if remove_stale_temp and idist.get_rank() == 0:
            remove_stale_temp_files(self.save_dir, self.logger)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._engine = engine

    @property
    def best_model_file(self) -> str | None:
        """Path of the key-metric (best-model) file this saver has recorded and that exists, else ``None``."""
        if self._key_metric_checkpoint is None or not self._key_metric_checkpoint._saved:
            return None
        fixed = getattr(self._key_metric_checkpoint.save_handler, "filename", None)
        path = os.path.join(self.save_dir, fixed or self._key_metric_checkpoint._saved[-1].filename)
        return path if os.path.isfile(path) else None

    def state_dict(self) -> dict[str, Any]:
        """
        The best-metric record: ``{"_saved": [(score, filename), ...], "best_metric": ..., "best_metric_epoch": ...}``
        (ignite's ``Checkpoint`` state; the attached engine's values, ``-1`` when unknown), as python numbers so that
        the checkpoint loads with ``weights_only=True``.
        """
        saved = [] if self._key_metric_checkpoint is None else self._key_metric_checkpoint._saved
        state = getattr(self._engine, "state", None)
        return {
            "_saved": [(float(p), str(f)) for p, f in saved],
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """
        Restore :meth:`state_dict`'s record (or the ``checkpointer`` entry of MONAI's ``key_metric_save_state``), so
        the key-metric file is replaced only by a better model; a recorded file no longer in ``save_dir`` is dropped.
        """
        if self._key_metric_checkpoint is None:
            warnings.warn(
                "AtomicCheckpointSaver.load_state_dict: no key metric saver (save_key_metric=False).", stacklevel=2
            )
            return
        fixed = getattr(self._key_metric_checkpoint.save_handler, "filename", None)  # the name on disk, if fixed
        on_disk = [os.path.isfile(os.path.join(self.save_dir, fixed or f)) for _, f in state_dict["_saved"]]
        kept = [(p, f) for (p, f), ok in zip(state_dict["_saved"], on_disk) if ok]
        gone = [fixed or f for (_, f), ok in zip(state_dict["_saved"], on_disk) if not ok]
        if gone:
            warnings.warn(
                f"best-model record: {gone} no longer exist(s) in '{self.save_dir}'; the next validation result "
                "will be saved whatever its score.",
                stacklevel=2,
            )
        super().load_state_dict({"_saved": kept})
        state = getattr(self._engine, "state", None)
        if state is not None and kept and "best_metric" in state_dict:
            state.best_metric = state_dict["best_metric"]
            state.best_metric_epoch = state_dict["best_metric_epoch"]


class FinalModelSaver:
    """
    At the end of every training run (the trainer's ``COMPLETED``), write the networks of ``save_dict`` to
    ``save_dir/filename`` (atomically, in the format of :class:`AtomicCheckpointSaver`: one network is saved as its
    bare state dict) **unless** ``best_saver`` holds a validated best model, so the file that inference loads
    (``model.pt``: what MONAI Label's ``/infer`` serves) always comes from the training: the best validated model when
    there is one, else the final weights (no validation data, or a run shorter than the validation interval, e.g. a
    short MONAI Label ``/train`` request).

    Args:
        save_dir: checkpoint folder (created if missing).
        save_dict: ``{"model": network}``; ``DistributedDataParallel`` / ``DataParallel`` wrappers are unwrapped.
        filename: file name in ``save_dir``; the same as ``best_saver``'s ``key_metric_filename``.
        best_saver: the validation's best-model saver, or ``None`` (always write).
        name: logger name; ``None``: the engine's logger.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        best_saver: AtomicCheckpointSaver | None = None,
        name: str | None = None,
    ) -> None:
        if not save_dict:
            raise ValueError("FinalModelSaver: save_dict is empty; pass e.g. {'model': network}.")
        self.save_dir, self.save_dict, self.filename = os.fspath(save_dir), dict(save_dict), filename
        self.best_saver = best_saver
        self.logger = logging.getLogger(name) if name is not None else None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:  # torchrun: rank 0 writes (ignite's DiskSaver would not write here anyway)
            return
        logger = self.logger or engine.logger
        best = self.best_saver.best_model_file if self.best_saver is not None else None
        if best is not None:
            logger.info(f"{os.path.join(self.save_dir, self.filename)}: keeping the best validated model ({best}).")
            return
        state = {k: unwrap_network(v).state_dict() for k, v in self.save_dict.items()}
        checkpoint = next(iter(state.values())) if len(state) == 1 else state
        DiskSaver(self.save_dir, atomic=True, create_dir=True, require_empty=False)(checkpoint, self.filename)
        logger.info(
            f"{os.path.join(self.save_dir, self.filename)}: no validated best model in this training, saved the final "
            f"weights (epoch {engine.state.epoch})."
        )
