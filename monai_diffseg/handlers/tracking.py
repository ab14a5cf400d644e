# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""The bundles' experiment-tracking switch: MONAI's ``MLFlowHandler`` entries of ``train.json`` are disabled by it."""

from __future__ import annotations

import torch.distributed as dist

from monai_diffseg.utils import as_flag

__all__ = ["tracking_disabled"]


def tracking_disabled(enabled: bool | str | None, name: str = "use_mlflow") -> bool:
    """
    ``_disabled_`` of an ``MLFlowHandler`` entry in a bundle's ``train.json`` (``"$monai_diffseg.handlers.
    tracking_disabled(@use_mlflow)"``): ``True`` unless the option ``enabled`` is on and this process is rank 0 (or
    not distributed), so under ``torchrun`` only rank 0 logs, as MONAI's ``--tracking`` settings do.

    ``enabled``: a bool, or the string ``python -m monai.bundle run ... --use_mlflow true`` passes (the command line
    gives ``"true"``/``"false"`` as strings, and ``"false"`` is truthy); ``None`` is off.

    Raises:
        ValueError: a string that is not a yes/no value (naming the option ``name``).
    """
    if not as_flag(enabled, name):
        return True
    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0
