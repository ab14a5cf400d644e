# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Undo the padding of :func:`monai.data.pad_list_data_collate` on decollated cases."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import MapTransform, PadListDataCollate

__all__ = ["UnpadCollated", "UnpadCollateD", "UnpadCollateDict"]


class UnpadCollated(MapTransform):
    """
    Crop the keys that :func:`monai.data.pad_list_data_collate` padded back to each case's own size.

    Placed in the post-processing after decollation, it restores each case's label, padded to the largest of a batch
    of mixed sizes (ISIC 2018: 540x722 to 6688x4439), for evaluation at the stored size; keys that were not padded are
    left as they are. It is the dictionary wrapper MONAI lacks for :meth:`monai.transforms.PadListDataCollate.inverse`
    (``Invertd`` accepts only ``MapTransform``).

    Args:
        keys: keys to restore, e.g. ``"label"``.
        allow_missing_keys: skip absent keys (unlabelled cases).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = PadListDataCollate.inverse({key: d[key]})[key]
        return d


UnpadCollateD = UnpadCollateDict = UnpadCollated
