# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""MONAI Label's bundle train task with the app's per-bundle overrides (the bundle's train.json is not edited)."""

from __future__ import annotations

from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["DiffusionBundleTrainTask"]


class DiffusionBundleTrainTask(BundleTrainTask):
    """
    :class:`monailabel.tasks.train.bundle.BundleTrainTask` that adds ``overrides`` (config ids of
    ``configs/train.json``, e.g. a smaller network that fits the served ``model.pt``) to the bundle run of every
    /train request, after MONAI Label's own (data lists, ``max_epochs``, device, handlers).
    """

    def __init__(self, path: str, conf: dict[str, str], overrides: dict[str, Any] | None = None, **kwargs: Any):
        self.overrides = dict(overrides or {})
        super().__init__(path, conf, **kwargs)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update(self.overrides)
        return overrides
