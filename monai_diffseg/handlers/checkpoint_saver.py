# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Checkpoint saving with atomic writes (no truncated checkpoint after a crash or a kill mid-write)."""

from __future__ import annotations

from typing import Any

from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver"]


class AtomicCheckpointSaver(CheckpointSaver):
    """
    MONAI ``CheckpointSaver`` whose files are written to a temporary file in the same folder and then moved into
    place with ``os.replace``, so a checkpoint on disk is always complete.

    MONAI turns ignite's atomic mode off because older ignite versions made atomic files private to their owner;
    current ignite (>= 0.4.11) restores group/others read permission after the move, so the reason is gone.

    Args:
        args: positional arguments of :class:`monai.handlers.CheckpointSaver`.
        interval_filename: fixed file name for the interval checkpoint (e.g. ``"checkpoint_last.pt"``) so that a
            resume step can find it; it is overwritten in place (atomically) instead of delete-then-write, so there
            is never a moment without a complete checkpoint.
        kwargs: keyword arguments of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(self, *args: Any, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True  # ignite DiskSaver's switch for tmp-file + os.replace
        if interval_filename is not None and self._interval_checkpoint is not None:
            handler = self._interval_checkpoint.save_handler
            handler.filename = interval_filename
            handler.remove = lambda filename: None  # the atomic replace already drops the previous file
