# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Checked conversion of stored binary masks ({0, 1} or {0, 255}) to {0, 1}."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

__all__ = ["BinaryMask", "BinaryMaskd", "BinaryMaskD", "BinaryMaskDict"]


class BinaryMask(Transform):
    """
    Map a stored binary mask to ``{0, 1}`` floats, refusing anything else.

    Accepts masks stored as ``{0, 1}`` or ``{0, 255}`` (ISIC, PH2, most PNG masks; a mask that is all 0 or all 255
    is fine). Lossy masks (JPEG, as Kvasir-SEG ships them) have intermediate values: pass ``threshold`` (e.g. 127)
    to binarise them explicitly instead. A mask whose values are all in ``{0, 1}`` is a label map (as MONAI Label
    stores the masks it serves and the ones users correct) and is taken as it is, whatever ``threshold``, so one
    bundle trains on both the archive's 0-255 masks and MONAI Label's 0/1 labels. RGB masks (3 equal channels) are
    reduced to one channel.

    Args:
        threshold: if given, ``mask > threshold`` is foreground (unless the mask is a ``{0, 1}`` label map) and no
            value check is made.

    Raises:
        ValueError: naming the mask file and the unexpected values.
    """

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        meta = img.meta if isinstance(img, MetaTensor) else {}
        name = str(meta.get("filename_or_obj", "<in-memory mask>"))
        t = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        if t.ndim >= 3 and t.shape[0] in (3, 4):
            # PIL loads some masks as RGB(A): accept them if the colour channels agree
            if not torch.equal(t[0], t[1]) or not torch.equal(t[0], t[2]):
                raise ValueError(
                    f"mask '{name}' has {t.shape[0]} differing colour channels; expected a grayscale mask."
                )
            t = t[:1]
        values = torch.unique(t)
        if self.threshold is not None:
            return (t > (0 if set(values.tolist()) <= {0, 1} else self.threshold)).float()
        if not any(set(values.tolist()) <= allowed for allowed in ({0, 1}, {0, 255})):
            shown = values[:8].tolist()
            raise ValueError(
                f"mask '{name}' has values {shown}{' ...' if values.numel() > 8 else ''}; expected a binary mask with "
                "values {0, 1} or {0, 255} (for lossy JPEG masks set a threshold, e.g. BinaryMaskd(threshold=127))."
            )
        return (t > 0).float()


class BinaryMaskd(MapTransform):
    """Dictionary version of :class:`BinaryMask`."""

    def __init__(self, keys: KeysCollection, threshold: float | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BinaryMask(threshold)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


BinaryMaskD = BinaryMaskDict = BinaryMaskd
