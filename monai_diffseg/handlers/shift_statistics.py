# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Training-set statistics for the per-case shift scores, written next to the checkpoint at the end of training."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_diffseg.metrics.shift_score import SHIFT_STATS_FILENAME, shift_statistics
from monai_diffseg.networks.utils import load_network_weights
from monai_diffseg.utils import atomic_write, unwrap_network

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["ShiftStatisticsWriter", "spread_subset"]


def spread_subset(items: Sequence[Any], max_items: int | None) -> list[Any]:
    """
    At most ``max_items`` of ``items``, evenly spread over the whole list (first and last included, order kept), so
    a capped subset covers a data list sorted by source or acquisition date; all of them when ``max_items`` is
    ``None`` or not smaller than ``len(items)``.
    """
    items = list(items)
    if max_items is None or len(items) <= max_items:
        return items
    if max_items < 1:
        raise ValueError(f"spread_subset: max_items must be >= 1 or None, got {max_items}.")
    if max_items == 1:
        return items[:1]
    step = (len(items) - 1) / (max_items - 1)
    return [items[round(i * step)] for i in range(max_items)]


class ShiftStatisticsWriter:
    """
    Writes the training-set statistics that :class:`monai_diffseg.metrics.ShiftScore` compares each test image with
    (``input_distance``, ``feature_distance``): :func:`monai_diffseg.metrics.shift_statistics` of the training
    images through the bundle's non-random preprocessing (the validation transforms), with the weights of
    ``model_file``, saved atomically with ``torch.save`` to ``output_file`` (default: ``shift_stats.pt`` beside
    ``model_file``, where the bundles' inference looks for it).

    Attached to a trainer, it runs once on ``COMPLETED`` on rank 0 only (under torchrun the other ranks return at
    once): attach it **after** :class:`~monai_diffseg.handlers.FinalModelSaver`, so ``model_file`` (``model.pt``) is
    the model inference will load, the best validated one when there was validation, else the final weights. The
    network is copied before the weights are loaded, so the trainer's network is not changed. :meth:`write` also
    runs it on its own, for a checkpoint trained before this handler existed (the bundles' ``shift_stats`` entry).

    Args:
        network: the trained network (a ``DistributedDataParallel`` / ``DataParallel`` wrapper is unwrapped).
        datalist: the training data list (``{"image": ..., ...}`` items).
        transform: non-random preprocessing of one item to the network's input (``transform(item)[image_key]`` is
            ``(C_in, *S)``).
        model_file: checkpoint whose weights the statistics are computed with; ``None`` uses ``network`` as it is.
        output_file: where to write; ``None``: ``shift_stats.pt`` beside ``model_file`` (required then).
        image_key: the image entry of the transformed item.
        max_images: at most this many training images, evenly spread over the list (:func:`spread_subset`; 200 by
            default: the statistics are 4 numbers per input channel and one per condition feature, and 200 images
            take seconds to a minute on a CPU); ``None`` for all.
        enabled: ``False`` makes :meth:`attach` a no-op.
        name: logger name; ``None``: the engine's logger (this module's when run alone).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        datalist: Sequence[Mapping[str, Any]],
        transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        model_file: str | os.PathLike | None = None,
        output_file: str | os.PathLike | None = None,
        image_key: str = "image",
        max_images: int | None = 200,
        enabled: bool = True,
        name: str | None = None,
    ) -> None:
        if output_file is None and model_file is None:
            raise ValueError("ShiftStatisticsWriter: give output_file, or model_file to write shift_stats.pt beside.")
        self.network, self.datalist, self.transform = network, datalist, transform
        self.model_file = None if model_file is None else os.fspath(model_file)
        self.output_file = (
            os.fspath(output_file)
            if output_file is not None
            else os.path.join(os.path.dirname(os.path.abspath(self.model_file)), SHIFT_STATS_FILENAME)
        )
        self.image_key, self.max_images, self.enabled = image_key, max_images, enabled
        self.logger = logging.getLogger(name) if name is not None else None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        self.write()

    def _images(self, items: list[Mapping[str, Any]]) -> Iterator[torch.Tensor]:
        for item in items:
            out = self.transform(dict(item))
            if self.image_key not in out:
                raise ValueError(
                    f"ShiftStatisticsWriter: the transform's output has no '{self.image_key}' (keys: {sorted(out)}); "
                    "pass image_key."
                )
            yield out[self.image_key]

    @torch.no_grad()
    def write(self) -> str:
        """Compute and write the statistics; returns the path written."""
        logger = self.logger or logging.getLogger(__name__)
        items = spread_subset(self.datalist, self.max_images)
        if len(items) < 2:
            raise ValueError(
                f"ShiftStatisticsWriter: {len(self.datalist)} training image(s); the statistics need at least 2."
            )
        module = unwrap_network(self.network)
        if self.model_file is not None:
            module = copy.deepcopy(module)  # the trainer's network keeps its (final) weights
            load_network_weights(module, self.model_file, map_location=next(module.parameters()).device)
        was_training = module.training
        module.eval()
        try:
            stats = shift_statistics(self._images(items), module)
        finally:
            module.train(was_training)
        stats["model_file"] = self.model_file or ""
        with atomic_write(self.output_file, "wb") as f:
            torch.save(stats, f)
        weights = self.model_file or "the network's current weights"
        logger.info(
            f"{self.output_file}: shift statistics of {stats['num_images']} training image(s) "
            f"({math.ceil(100 * len(items) / max(1, len(self.datalist)))}% of the list) with {weights}."
        )
        return self.output_file
