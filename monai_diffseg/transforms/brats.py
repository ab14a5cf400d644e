# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""BraTS label maps <-> the three nested evaluation regions TC / WT / ET, checked in both directions.

Forward: MONAI's :class:`monai.transforms.ConvertToMultiChannelBasedOnBratsClasses` (TC = 1 + ET, WT = 1 + 2 + ET,
ET = ``et_label``), after a check that the label map holds only BraTS values: a BraTS 2023 map (enhancing tumour 3)
read with ``et_label=4`` would otherwise lose its enhancing tumour silently. Backward (what MONAI lacks): the region
masks of a prediction back to one BraTS label map for NIfTI output and MONAI Label, ET -> ``et_label``, TC minus ET
-> 1, WT minus TC -> 2 (Menze et al., IEEE TMI 2015; Bakas et al., arXiv:1811.02629).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, MapTransform, Transform
from monai.utils import convert_to_tensor

from monai_diffseg.transforms.label_map import MasksToLabelMap

__all__ = [
    "BRATS_REGIONS",
    "BratsLabelsToRegions",
    "BratsLabelsToRegionsd",
    "BratsLabelsToRegionsD",
    "BratsLabelsToRegionsDict",
    "BratsRegionsToLabels",
    "BratsRegionsToLabelsd",
    "BratsRegionsToLabelsD",
    "BratsRegionsToLabelsDict",
]

BRATS_REGIONS: tuple[str, ...] = ("tc", "wt", "et")
"""Channel order of the region masks (as MONAI's conversion): tumour core, whole tumour, enhancing tumour."""


def _check_et_label(et_label: int, owner: str) -> int:
    if int(et_label) in (0, 1, 2) or int(et_label) < 0:
        raise ValueError(
            f"{owner}: et_label must be the enhancing-tumour label (4 for BraTS 2018-2022, 3 for BraTS 2023), got "
            f"{et_label}; 0, 1 and 2 are background, necrosis and oedema."
        )
    return int(et_label)


class BratsLabelsToRegions(Transform):
    """
    A BraTS label map ``(1, *S)`` or ``(*S)`` (0 background, 1 necrotic / non-enhancing core, 2 oedema, ``et_label``
    enhancing tumour) to the region masks ``(3, *S)`` TC / WT / ET (float ``{0, 1}``), by MONAI's
    :class:`~monai.transforms.ConvertToMultiChannelBasedOnBratsClasses`. ``MetaTensor`` metadata is kept.

    Args:
        et_label: 4 for BraTS 2018-2022, 3 for BraTS 2023.

    Raises:
        ValueError: values outside ``{0, 1, 2, et_label}`` (naming them, the file when known and the likely fix), or a
            bad ``et_label``.
    """

    def __init__(self, et_label: int = 4) -> None:
        self.et_label = _check_et_label(et_label, type(self).__name__)
        self.converter = ConvertToMultiChannelBasedOnBratsClasses(et_label=self.et_label)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        t = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        plain = t.as_tensor() if isinstance(t, MetaTensor) else t
        if plain.ndim == 4 and plain.shape[0] != 1:
            raise ValueError(
                f"{type(self).__name__}: expected a label map (1, *S) or (*S), got shape {tuple(plain.shape)}; "
                "load the seg file without a channel axis or with one channel."
            )
        values = torch.unique(plain).tolist()
        wrong = [int(v) if float(v).is_integer() else v for v in values if v not in (0, 1, 2, self.et_label)]
        if wrong:
            src = t.meta.get("filename_or_obj", "") if isinstance(t, MetaTensor) else ""
            other = 3 if self.et_label == 4 else 4
            hint = (
                f" BraTS {'2023' if other == 3 else '2018-2022'} labels the enhancing tumour {other}: set et_label={other}."
                if other in wrong
                else ""
            )
            raise ValueError(
                f"{type(self).__name__}: label {('of ' + repr(str(src)) + ' ') if src else ''}holds values {wrong} "
                f"outside the BraTS labels {{0, 1, 2, {self.et_label}}} (et_label={self.et_label}).{hint}"
            )
        regions = self.converter(plain).float()  # (3, *S)
        if isinstance(t, MetaTensor):
            return MetaTensor(regions, meta=t.meta, applied_operations=t.applied_operations)
        return regions


class BratsLabelsToRegionsd(MapTransform):
    """Dictionary version of :class:`BratsLabelsToRegions` (in place)."""

    def __init__(self, keys: KeysCollection, et_label: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsLabelsToRegions(et_label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class BratsRegionsToLabels(Transform):
    """
    Region masks or probabilities ``(3, *S)`` in the order TC / WT / ET back to one BraTS label map ``(*S)``
    (``uint8``, no channel axis, like :class:`~monai_diffseg.transforms.MasksToLabelMap`): a voxel is ``et_label``
    where ET is on (``>= threshold``), else 1 where TC is on, else 2 where WT is on, else 0. The inverse of
    :class:`BratsLabelsToRegions` on nested regions; on a prediction whose regions are not nested the inner region
    wins (ET outside TC is still enhancing tumour). ``MetaTensor`` metadata (affine) is kept.

    Args:
        et_label: 4 for BraTS 2018-2022, 3 for BraTS 2023.
        threshold: a region is on where its value is ``>= threshold``.

    Raises:
        ValueError: not three channels, or a bad ``et_label``.
    """

    def __init__(self, et_label: int = 4, threshold: float = 0.5) -> None:
        self.et_label = _check_et_label(et_label, type(self).__name__)
        # MasksToLabelMap: later channels win -> order WT, TC, ET
        self.to_map = MasksToLabelMap(values=(2, 1, self.et_label), threshold=threshold, dtype=np.uint8)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        if img.ndim < 2 or img.shape[0] != len(BRATS_REGIONS):
            raise ValueError(
                f"{type(self).__name__}: expected the region masks (3, *S) in the order TC, WT, ET, got shape "
                f"{tuple(img.shape)}."
            )
        return self.to_map(img[[1, 0, 2]])


class BratsRegionsToLabelsd(MapTransform):
    """Dictionary version of :class:`BratsRegionsToLabels` (in place: the map replaces the region masks)."""

    def __init__(
        self, keys: KeysCollection, et_label: int = 4, threshold: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsRegionsToLabels(et_label, threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


BratsLabelsToRegionsD = BratsLabelsToRegionsDict = BratsLabelsToRegionsd
BratsRegionsToLabelsD = BratsRegionsToLabelsDict = BratsRegionsToLabelsd
