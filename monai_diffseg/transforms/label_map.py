# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Per-channel masks or probabilities to one integer label map without a channel axis (what a viewer or MONAI Label
writes as a segmentation file)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor, get_equivalent_dtype

__all__ = ["MasksToLabelMap", "MasksToLabelMapd", "MasksToLabelMapD", "MasksToLabelMapDict"]


class MasksToLabelMap(Transform):
    """
    Turn ``C`` per-channel masks (multi-label: sigmoid probabilities or ``{0, 1}`` masks, one structure per channel)
    into one integer label map ``(*S)``: a pixel takes ``values[c]`` of the **last** channel ``c`` that is on
    (``>= threshold``), 0 where none is. Later channels therefore win where structures overlap, which gives nested
    structures their own label: fundus ``[disc, cup]`` with ``values=(1, 2)`` gives 0 background, 1 disc rim (disc
    minus cup), 2 cup; a one-channel lesion mask gives 0 / 1.

    The channel axis is removed, so a 2D map ``(W, H)`` is written as a 2D image (a ``(1, W, H)`` array is a 3D
    image to ITK's PNG/JPEG writers). ``MetaTensor`` metadata (affine, original size) is kept.

    Args:
        values: label value per channel; default ``1, 2, ..., C``. 0 is reserved for background.
        threshold: a channel is on where its value is ``>= threshold``.
        dtype: integer dtype of the map (``uint8`` fits 255 labels and every 8-bit image format).

    Raises:
        ValueError: ``values`` does not give one positive value per channel, or the input has no channel axis.
    """

    def __init__(self, values: Sequence[int] | None = None, threshold: float = 0.5, dtype: Any = np.uint8) -> None:
        if values is not None and any(int(v) <= 0 for v in values):
            raise ValueError(f"MasksToLabelMap: values {list(values)} must be positive (0 is the background).")
        self.values = None if values is None else [int(v) for v in values]
        self.threshold = threshold
        self.dtype = get_equivalent_dtype(dtype, torch.Tensor)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """
        Args:
            img: ``(C, *S)`` masks or probabilities, channel first.

        Returns:
            ``(*S)`` integer label map (a ``MetaTensor`` when ``img`` is one).
        """
        t = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        if t.ndim < 2:
            raise ValueError(
                f"MasksToLabelMap: expected channel-first masks (C, *spatial), got shape {tuple(t.shape)}."
            )
        values = self.values if self.values is not None else list(range(1, t.shape[0] + 1))
        if len(values) != t.shape[0]:
            raise ValueError(
                f"MasksToLabelMap: {len(values)} values {values} for {t.shape[0]} channels (shape {tuple(t.shape)}); "
                "give one label value per channel."
            )
        masks = t.as_tensor() if isinstance(t, MetaTensor) else t
        label = torch.zeros(masks.shape[1:], dtype=self.dtype, device=masks.device)
        for channel, value in zip(masks, values):
            label[channel >= self.threshold] = value
        if isinstance(t, MetaTensor):
            return MetaTensor(label, meta=t.meta, applied_operations=t.applied_operations)
        return label


class MasksToLabelMapd(MapTransform):
    """Dictionary version of :class:`MasksToLabelMap` (in place: the map replaces the masks under each key)."""

    def __init__(
        self,
        keys: KeysCollection,
        values: Sequence[int] | None = None,
        threshold: float = 0.5,
        dtype: Any = np.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MasksToLabelMap(values, threshold, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


MasksToLabelMapD = MasksToLabelMapDict = MasksToLabelMapd
