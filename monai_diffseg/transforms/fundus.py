# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Transforms for nested structures such as the optic disc and cup of fundus photographs.

- :class:`FundusLabeld` turns a REFUGE-coded mask (0 cup, 128 rim, 255 background) or a pair of Drishti-GS soft maps
  (fraction of 4 experts) into a 2-channel multi-label mask ``(2, *S)``: channel 0 disc, channel 1 cup (the cup lies
  inside the disc, so a cup pixel is a disc pixel too).
- :class:`EnforceNesting` / :class:`EnforceNestingd` keep an inner structure inside an outer one: ``inner :=
  min(inner, outer)``, i.e. ``cup AND disc`` for masks and ``p_cup <= p_disc`` for probabilities.
- :func:`square_roi`, :func:`crop_square`, :class:`RandDiscCropd`: the disc-centred square region of interest used
  for training crops and by :class:`monai_diffseg.inferers.RegionOfInterestInferer`.
- :class:`DownscaleToMaxSized`: shrink large photographs (REFUGE: 2124x2056) before caching; smaller ones untouched.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Resize, Transform
from monai.utils import convert_to_tensor, ensure_tuple_rep

__all__ = [
    "DownscaleToMaxSized",
    "EnforceNesting",
    "EnforceNestingd",
    "FundusLabeld",
    "RandDiscCropd",
    "crop_square",
    "expert_level",
    "square_box",
    "square_roi",
]

NUM_EXPERTS = 4
# REFUGE masks: 0 cup, 128 rim, 255 background; thresholds half-way between the codes
_REFUGE_DISC_BELOW = 192.0
_REFUGE_CUP_BELOW = 64.0


def expert_level(expert_threshold: int, num_experts: int = NUM_EXPERTS) -> float:
    """Soft-map value (0-255) from which at least ``expert_threshold`` of ``num_experts`` experts marked a pixel:
    half-way between the levels of ``k - 1`` and ``k`` experts, ``(k - 0.5) * 255 / num_experts`` (Drishti-GS stores
    ``k`` experts as ``round(k * 255 / 4)``: 0, 64, 128, 191, 255)."""
    if isinstance(expert_threshold, bool) or not 1 <= int(expert_threshold) <= num_experts:
        raise ValueError(f"expert_threshold must be an integer 1-{num_experts}, got {expert_threshold!r}.")
    return (int(expert_threshold) - 0.5) * 255.0 / num_experts


class FundusLabeld(MapTransform):
    """
    Make the 2-channel optic disc / cup label ``(2, *S)`` (float, {0, 1}; channel 0 disc, channel 1 cup) from the
    loaded mask(s) of :func:`monai_diffseg.data.refuge_datalist` or :func:`monai_diffseg.data.drishti_gs_datalist`.

    - REFUGE (``cup_key`` absent from the data): one mask coded 0 = cup, 128 = rim, 255 = background; disc is
      ``value < 192``, cup ``value < 64`` (robust to a few grey levels of resampling).
    - A label map (``cup_key`` absent, every value in ``{0, 1, 2}``): 0 background, 1 disc rim, 2 cup, as the
      bundle serves its prediction (``MasksToLabelMapd``) and MONAI Label stores labels; disc is ``value >= 1``, cup
      ``value == 2``. (A REFUGE mask always has background 255.)
    - Drishti-GS (``cup_key`` present): ``d[key]`` the disc and ``d[cup_key]`` the cup soft map (``k`` of 4 experts
      stored as ``k * 255 / 4``); a pixel is foreground when at least ``expert_threshold`` experts marked it
      (:func:`expert_level`). The threshold is read from ``d[threshold_key]`` when present (the data list records
      the one it was built with), else ``expert_threshold``. ``d[cup_key]`` is removed after merging.

    Multi-channel masks (RGB-stored) use their first channel. With ``nested`` the cup is clipped to the disc
    (``cup AND disc``; REFUGE masks are nested by construction, Drishti-GS soft maps overhang in a few cases).

    Args:
        keys: key(s) of the loaded mask ``(C, *S)``; the label is written in place.
        cup_key: key of the loaded cup soft map (Drishti-GS).
        threshold_key: key of the per-item expert threshold.
        expert_threshold: default experts threshold (1-4).
        nested: clip the cup to the disc.
        allow_missing_keys: skip cases without a label (inference on unlabelled images).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        cup_key: str = "label_cup",
        threshold_key: str = "expert_threshold",
        expert_threshold: int = 2,
        nested: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        expert_level(expert_threshold)  # validates
        self.cup_key, self.threshold_key = cup_key, threshold_key
        self.expert_threshold = int(expert_threshold)
        self.nested = nested

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            value = convert_to_tensor(mask, dtype=torch.float32, track_meta=False)[:1]
            if self.cup_key in d:
                k = d.get(self.threshold_key, self.expert_threshold)
                level = expert_level(int(k.item() if isinstance(k, torch.Tensor) else k))
                cup_map = convert_to_tensor(d.pop(self.cup_key), dtype=torch.float32, track_meta=False)[:1]
                if cup_map.shape != value.shape:
                    raise ValueError(
                        f"FundusLabeld: disc map '{key}' {tuple(value.shape[1:])} and cup map '{self.cup_key}' "
                        f"{tuple(cup_map.shape[1:])} differ in size; the two soft maps of a case must match."
                    )
                disc, cup = value >= level, cup_map >= level
            elif set(torch.unique(value).tolist()) <= {0, 1, 2}:
                disc, cup = value >= 1, value == 2
            else:
                disc, cup = value < _REFUGE_DISC_BELOW, value < _REFUGE_CUP_BELOW
            if self.nested:
                cup = cup & disc
            label = torch.cat([disc, cup]).float()
            d[key] = MetaTensor(label, meta=dict(mask.meta)) if isinstance(mask, MetaTensor) else label
        return d


class EnforceNesting(Transform):
    """
    Keep an inner structure inside an outer one: ``x[inner] := min(x[inner], x[outer])`` along ``channel_dim``.

    On binary masks this is ``inner AND outer`` (cup := cup AND disc); on probabilities ``p_inner <= p_outer``, so
    thresholding both at any level gives nested masks; on ensemble samples ``(E, C, *S)`` (``channel_dim=1``) each
    member is nested, so uncertainty maps and fusions of the samples are consistent with the fused mask.

    Args:
        outer: channel of the enclosing structure (disc: 0).
        inner: channel of the enclosed structure (cup: 1).
        channel_dim: the channel dimension (0 for ``(C, *S)``, 1 for ``(E, C, *S)`` or ``(N, C, *S)``).
    """

    def __init__(self, outer: int = 0, inner: int = 1, channel_dim: int = 0) -> None:
        if outer == inner:
            raise ValueError(f"outer and inner must be different channels, got {outer} for both.")
        self.outer, self.inner, self.channel_dim = int(outer), int(inner), int(channel_dim)

    def __call__(self, img: Any) -> Any:
        t = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        n = t.shape[self.channel_dim] if t.ndim > self.channel_dim else 0
        if max(self.outer, self.inner) >= n:
            raise ValueError(
                f"EnforceNesting: channels outer={self.outer}, inner={self.inner} need {max(self.outer, self.inner) + 1}"
                f" channels along dim {self.channel_dim}, got shape {tuple(t.shape)}."
            )
        out = t.clone()
        inner, outer = out.select(self.channel_dim, self.inner), t.select(self.channel_dim, self.outer)
        inner.copy_(torch.minimum(inner, outer))
        return out


class EnforceNestingd(MapTransform):
    """Dictionary version of :class:`EnforceNesting` (same ``outer``, ``inner``, ``channel_dim`` for every key)."""

    def __init__(
        self,
        keys: KeysCollection,
        outer: int = 0,
        inner: int = 1,
        channel_dim: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.nesting = EnforceNesting(outer, inner, channel_dim)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.nesting(d[key])
        return d


def square_roi(mask: Any, margin: float = 2.0, min_side: float = 1.0) -> tuple[tuple[float, ...], float] | None:
    """
    The square region of interest around the foreground of a 2D mask: ``(centre, side)`` with ``centre`` the middle
    of the foreground's bounding box (in array index coordinates, one per axis) and ``side = max(margin * largest
    bounding-box extent, min_side)``; ``None`` for an empty mask.

    Args:
        mask: ``(*S)`` array/tensor; foreground where > 0.5.
        margin: side of the square over the largest extent (2: the structure fills half of the square).
        min_side: smallest side (in pixels), so a few stray pixels do not give a needle-sized region.
    """
    fg = convert_to_tensor(mask, track_meta=False) > 0.5
    if not bool(fg.any()):
        return None
    idx = fg.nonzero()
    low, high = idx.min(dim=0).values.double(), idx.max(dim=0).values.double() + 1.0
    centre = tuple(float(c) for c in (low + high) / 2.0)
    return centre, max(float(margin) * float((high - low).max()), float(min_side))


def square_box(centre: Sequence[float], side: float) -> list[tuple[int, int]]:
    """Integer ``[start, stop)`` per axis of the square of ``side`` (rounded, >= 1) centred at ``centre``."""
    n = max(1, int(round(side)))
    return [(int(round(c - n / 2.0)), int(round(c - n / 2.0)) + n) for c in centre]


def crop_square(img: torch.Tensor, centre: Sequence[float], side: float) -> torch.Tensor:
    """
    Crop the square of ``side`` pixels centred at ``centre`` from a channel-first image ``(C, *S)``; the parts outside
    the image are zero (black, like the background of a fundus photograph). Returns ``(C, n, n)``, ``n = round(side)``.
    """
    box = square_box(centre, side)
    pad: list[int] = []
    for (start, stop), size in zip(reversed(box), reversed(img.shape[1:])):
        pad += [max(0, -start), max(0, stop - int(size))]
    out = F.pad(img, pad) if any(pad) else img
    index = [slice(None)] + [slice(start + max(0, -start), stop + max(0, -start)) for start, stop in box]
    return out[tuple(index)]


class RandDiscCropd(Randomizable, MapTransform):
    """
    With probability ``prob``, crop ``keys`` to a square around the optic disc of ``d[label_key]`` (channel
    ``channel``): side ``margin * disc extent * scale`` with ``scale`` drawn from ``scale_range``, centre shifted by a
    fraction of the side drawn from ``[-shift_range, shift_range]`` per axis; outside the image is zero. Otherwise, or
    without a disc, the data are returned unchanged (the full image).

    Training on such crops plus full images lets one network do both passes of
    :class:`monai_diffseg.inferers.RegionOfInterestInferer` (the jitter covers the coarse pass's misplacement).
    ``prob=1``, ``scale_range=(1, 1)``, ``shift_range=0`` crops deterministically around the reference disc (validation).

    Args:
        keys: keys to crop, channel-first ``(C, *S)`` of one spatial size (e.g. ``["image", "label"]``).
        label_key: key of the multi-label mask whose ``channel`` defines the region.
        prob: probability of cropping.
        margin: square side over the disc's largest extent.
        scale_range: range of the random factor on the side.
        shift_range: largest centre shift as a fraction of the side.
        channel: channel of the structure to centre on (disc: 0).
        min_side: smallest side in pixels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 1.0,
        margin: float = 2.0,
        scale_range: Sequence[float] = (1.0, 1.0),
        shift_range: float = 0.0,
        channel: int = 0,
        min_side: float = 8.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        if margin <= 0 or len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1] or shift_range < 0:
            raise ValueError(
                f"need margin > 0, 0 < scale_range[0] <= scale_range[1] and shift_range >= 0, got margin={margin}, "
                f"scale_range={tuple(scale_range)}, shift_range={shift_range}."
            )
        self.label_key, self.prob, self.margin = label_key, float(prob), float(margin)
        self.scale_range, self.shift_range = (float(scale_range[0]), float(scale_range[1])), float(shift_range)
        self.channel, self.min_side = int(channel), float(min_side)
        self._do, self._scale, self._shift = False, 1.0, np.zeros(2)

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.rand() < self.prob
        self._scale = self.R.uniform(*self.scale_range)
        self._shift = self.R.uniform(-self.shift_range, self.shift_range, 2) if self.shift_range > 0 else np.zeros(2)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        if self.label_key not in d:
            raise ValueError(f"RandDiscCropd: label key '{self.label_key}' not in data (keys: {list(d)}).")
        roi = square_roi(convert_to_tensor(d[self.label_key], track_meta=False)[self.channel], self.margin)
        if roi is None:
            return d  # no disc drawn: train on the full image
        centre, side = roi
        side = max(side * self._scale, self.min_side)
        centre = tuple(c + s * side for c, s in zip(centre, self._shift))
        for key in self.key_iterator(d):
            img = d[key]
            cropped = crop_square(convert_to_tensor(img, track_meta=False), centre, side)
            d[key] = MetaTensor(cropped, meta=dict(img.meta)) if isinstance(img, MetaTensor) else cropped
        return d


class DownscaleToMaxSized(MapTransform):
    """
    Resize ``keys`` (channel-first, one spatial size per case) so that their longest side is at most ``max_size``,
    keeping the aspect ratio; smaller images are left untouched (no upsampling). Keeps cached REFUGE photographs
    (2124x2056) small while the disc-centred crops still come from a higher resolution than the network input.

    Args:
        keys: keys to resize.
        max_size: longest side after resizing.
        mode: interpolation per key (``"bilinear"`` images, ``"nearest"`` masks).
        anti_aliasing: per key, as :class:`monai.transforms.Resize`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_size: int,
        mode: Sequence[str] | str = "bilinear",
        anti_aliasing: Sequence[bool] | bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(max_size) < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}.")
        self.max_size = int(max_size)
        self.resizers = [
            Resize(self.max_size, size_mode="longest", mode=m, anti_aliasing=a)
            for m, a in zip(ensure_tuple_rep(mode, len(self.keys)), ensure_tuple_rep(anti_aliasing, len(self.keys)))
        ]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, resizer in self.key_iterator(d, self.resizers):
            if max(d[key].shape[1:]) > self.max_size:
                d[key] = resizer(d[key])
        return d
