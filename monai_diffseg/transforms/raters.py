# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Multi-rater masks: load the ``R`` rater masks of a case as one stack, draw one rater per training iteration, and
derive the consensus (majority mask, rater agreement) and the reference ensemble of the distribution metrics.

Data lists come from :mod:`monai_diffseg.data.multirater` (``{"image", "raters": [path, ...], "case"}``).

References:
    - Kohl et al., "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018 (one random rater per
      training image).
    - Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical Image Segmentation", MICCAI 2019.
    - Rahman et al., "Ambiguous Medical Image Segmentation using Diffusion Models" (CIMD), CVPR 2023.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor, look_up_option

from .binary_mask import BinaryMask
from .io import LoadImage2D

__all__ = [
    "RATER_STACK_SUFFIX",
    "LoadRatersd",
    "RandRaterd",
    "RaterConsensusd",
    "RatersToEnsembled",
]

#: Suffix of the virtual file name given to a loaded rater stack (``<case><suffix>``), see :class:`LoadRatersd`.
RATER_STACK_SUFFIX = ".raters"

_TIES = ("foreground", "background")


class LoadRatersd(MapTransform):
    """
    Load each key's list of rater mask files as one binary :class:`monai.data.MetaTensor` ``(R, W, H)`` (MONAI's
    ``PILReader`` axis order, like :class:`~monai_diffseg.transforms.LoadImage2Dd`), one channel per rater.

    Each mask is read as stored and checked by :class:`~monai_diffseg.transforms.BinaryMask` (values {0, 1} or
    {0, 255}, or ``> threshold``). All masks of a case, and the already loaded ``image_key``, must have one size.
    The stack keeps the first mask's metadata but is named ``<case>.raters`` (``filename_or_obj``, in the folder of
    the first mask) after the item's ``name_key``: the stack is the case's annotation set, and writers that name
    outputs after a file stem (e.g. :class:`~monai_diffseg.handlers.CaseMetricsWriter` with ``image_key`` set to this
    key) then use the case id, where every QUBIQ image is called ``image.png``.

    Args:
        keys: keys holding lists of mask paths, e.g. ``"raters"``.
        image_key: key of the loaded image whose spatial size the masks must have (``None``: no check).
        name_key: key of the case id that names the stack (``None`` or absent: the first mask's name is kept).
        threshold: passed to :class:`~monai_diffseg.transforms.BinaryMask` (e.g. 127 for lossy JPEG masks).
        allow_missing_keys: skip absent keys (unlabelled cases).
        single_key: when a key is absent but this one is present, its one mask file is read as the only rater: an
            item with one annotation, as MONAI Label lists its labelled images (``{"image", "label"}``).

    Raises:
        ValueError: an empty list, an unreadable or non-binary mask (naming the file), or sizes that differ.
    """

    def __init__(
        self,
        keys: KeysCollection = "raters",
        image_key: str | None = "image",
        name_key: str | None = "case",
        threshold: float | None = None,
        allow_missing_keys: bool = False,
        single_key: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage2D("as_stored")
        self.binarize = BinaryMask(threshold)
        self.image_key, self.name_key = image_key, name_key
        self.single_key = single_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.single_key is not None and isinstance(d.get(self.single_key), (str, os.PathLike)):
            for key in self.keys:
                d.setdefault(key, [d[self.single_key]])
        image = d.get(self.image_key) if self.image_key else None
        for key in self.key_iterator(d):
            paths = [d[key]] if isinstance(d[key], (str, os.PathLike)) else list(d[key])
            if not paths:
                raise ValueError(f"'{key}' of case '{d.get(self.name_key, '?')}' lists no rater mask files.")
            masks = [self.binarize(self.loader(p)) for p in paths]
            ref_name, ref_shape = (self.image_key, tuple(image.shape[1:])) if image is not None else (None, None)
            for p, m in zip(paths, masks):
                shape = tuple(m.shape[1:])
                if ref_shape is None:
                    ref_name, ref_shape = p, shape
                elif shape != ref_shape:
                    raise ValueError(
                        f"rater mask '{p}' is {shape[0]}x{shape[1]} (WxH) but '{ref_name}' is "
                        f"{ref_shape[0]}x{ref_shape[1]}; the image and rater masks of one case must have one size."
                    )
            stack = MetaTensor(torch.cat([convert_to_tensor(m, track_meta=False) for m in masks]), meta=masks[0].meta)
            case = d.get(self.name_key) if self.name_key else None
            if case is not None:
                stack.meta["filename_or_obj"] = os.path.join(
                    os.path.dirname(str(paths[0])), f"{case}{RATER_STACK_SUFFIX}"
                )
            d[key] = stack
        return d


class RandRaterd(Randomizable, MapTransform):
    """
    Draw one rater per call: ``d[label_key] = d[key][k:k + 1]`` with ``k`` uniform in ``0 .. R - 1``, as the
    Probabilistic U-Net, PHiSeg and CIMD train on multi-rater data, so that a generative model learns the raters'
    spread instead of their consensus.

    Put it in the random (not cached) part of the training transforms, before the spatial augmentations of
    ``label_key``, so every epoch draws again. It draws from its own ``self.R`` (MONAI's ``Randomizable``): seeded by
    ``set_determinism`` / the data loader's worker seeds and saved by
    :class:`~monai_diffseg.handlers.RandomStateHandler`, so runs and resumed runs draw the same raters.

    Args:
        keys: key of the rater stack ``(R, *S)`` (see :class:`LoadRatersd`).
        label_key: output key of the drawn mask ``(1, *S)``.
        index_key: optional output key of the drawn rater index ``k`` (an ``int``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "raters",
        label_key: str = "label",
        index_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key, self.index_key = label_key, index_key
        self._index = 0

    def randomize(self, num_raters: int) -> None:
        self._index = int(self.R.randint(0, num_raters))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            stack = d[key]
            if stack.ndim < 2 or stack.shape[0] == 0:
                raise ValueError(
                    f"RandRaterd: '{key}' must be a rater stack (R, *S) with R >= 1, got {tuple(stack.shape)}."
                )
            self.randomize(int(stack.shape[0]))
            d[self.label_key] = stack[self._index : self._index + 1]
            if self.index_key:
                d[self.index_key] = self._index
        return d


class RaterConsensusd(MapTransform):
    """
    The consensus of a rater stack ``(R, *S)``: the majority mask ``(1, *S)`` (foreground where at least half of
    the raters mark it; ``tie`` decides pixels marked by exactly half of an even number of raters) and, optionally,
    the soft rater agreement ``(1, *S)``, the fraction of raters marking each pixel (compare it with the ensemble's
    probability map).

    With ``tie="foreground"`` (default) the majority mask is ``agreement >= 0.5``: for 4 LIDC graders "at least 2",
    the usual LIDC 50% consensus, and QUBIQ's 0.5 level of the averaged masks; ``"background"`` requires a strict
    majority (``> 0.5``). For odd ``R`` both coincide.

    Args:
        keys: key(s) of rater stacks.
        majority_key: output key of the majority mask (``None``: not written).
        agreement_key: output key of the agreement map (``None``: not written).
        tie: ``"foreground"`` or ``"background"``, see above.
        meta_key: key whose metadata the outputs take (e.g. ``"image"``, loaded, before any spatial transform), so that
            writers name and place them like the image's other output maps; default: the stack's metadata.
        allow_missing_keys: skip absent keys (unlabelled cases).
    """

    def __init__(
        self,
        keys: KeysCollection = "raters",
        majority_key: str | None = "label",
        agreement_key: str | None = "agreement",
        tie: str = "foreground",
        meta_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.majority_key, self.agreement_key = majority_key, agreement_key
        self.tie = look_up_option(tie, _TIES)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            stack = d[key]
            votes = convert_to_tensor(stack, dtype=torch.float32, track_meta=False).sum(0, keepdim=True)  # exact
            source = d.get(self.meta_key) if self.meta_key else stack
            meta = dict(source.meta) if isinstance(source, MetaTensor) else {}
            num = int(stack.shape[0])
            if self.majority_key:
                majority = (2 * votes >= num) if self.tie == "foreground" else (2 * votes > num)
                d[self.majority_key] = MetaTensor(majority.float(), meta=meta)
            if self.agreement_key:
                d[self.agreement_key] = MetaTensor(votes / num, meta=meta)
        return d


class RatersToEnsembled(MapTransform):
    """
    Rater stack ``(R, *S)`` to the reference-ensemble layout ``(R, 1, *S)`` of
    :class:`~monai_diffseg.metrics.GeneralizedEnergyDistanceMetric` and HM-IoU (one channel per rater, the raters
    as ensemble members), e.g. for :class:`~monai_diffseg.handlers.CaseMetricsWriter`'s ``reference_key``. Place it
    after the spatial transforms of the stack; the output is a plain tensor.

    Args:
        keys: key(s) of rater stacks.
        allow_missing_keys: skip absent keys.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = convert_to_tensor(d[key], track_meta=False).unsqueeze(1)
        return d
