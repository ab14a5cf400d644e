# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Weak supervision without masks for DiffSeg's healthy model, from the borders of the lesion images.

DiffSeg (Shuai et al. 2024, arXiv:2404.16474) needs a diffusion model of *healthy skin*. Without a folder of healthy
images, two mask-free fallbacks use the border band of the lesion images: dermoscopy images are framed on the lesion,
so their borders almost always show skin (and vignetting). Their only supervision is one assumption, no annotation:
*the outer ``border_fraction`` of every image is lesion-free* (images whose lesion reaches the border are accepted
noise). :class:`HealthySource` wires the choice between them and a folder of healthy images.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple, ensure_tuple_rep

from monai_diffseg.data import image_folder_datalist
from monai_diffseg.utils import gaussian_blur

__all__ = [
    "HEALTHY_SOURCES",
    "HealthySource",
    "BorderFill",
    "BorderFilld",
    "BorderFillD",
    "BorderFillDict",
    "RandBorderPatchd",
    "RandBorderPatchD",
    "RandBorderPatchDict",
    "border_band",
    "border_patch_starts",
]


def border_band(spatial_shape: Sequence[int], border_fraction: float) -> torch.Tensor:
    """
    ``(1, *S)`` float mask of the border band: 1 within ``max(1, round(border_fraction * size))`` voxels of any
    image edge, 0 inside.
    """
    shape = tuple(int(s) for s in spatial_shape)
    band = torch.ones(1, *shape)
    widths = [max(1, int(round(border_fraction * s))) for s in shape]
    band[(slice(None), *(slice(w, s - w) for w, s in zip(widths, shape)))] = 0.0
    return band


class BorderFill(Transform):
    """
    Pseudo-healthy image ``(C, *S) -> (C, *S)`` (plain float tensor) from the border band (:func:`border_band`):
    ``band * image + (1 - band) * fill`` where ``fill = blur(image * band) / blur(band)`` is a normalised Gaussian
    convolution (standard deviation ``sigma_fraction * min(spatial size)``) that spreads the border's skin colour,
    vignetting and colour gradients included, into the interior. No mask is used (see the module docstring).

    Args:
        border_fraction: band width as a fraction of each image side, in ``(0, 0.5)``.
        sigma_fraction: smoothing of the fill, as a fraction of the smallest image side (> 0).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, border_fraction: float = 0.15, sigma_fraction: float = 0.25) -> None:
        if not 0.0 < float(border_fraction) < 0.5:
            raise ValueError(f"border_fraction must be in (0, 0.5), got {border_fraction}.")
        if not float(sigma_fraction) > 0:
            raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}.")
        self.border_fraction = float(border_fraction)
        self.sigma_fraction = float(sigma_fraction)

    def __call__(self, img: Any) -> torch.Tensor:
        x = convert_to_tensor(img, track_meta=False).float()
        if x.ndim < 3:
            raise ValueError(f"BorderFill expects a channel-first image (C, H, W[, D]), got shape {tuple(x.shape)}.")
        band = border_band(x.shape[1:], self.border_fraction).to(x.device)
        sigma = self.sigma_fraction * min(x.shape[1:])
        fill = gaussian_blur((x * band)[:, None], sigma)[:, 0] / gaussian_blur(band[None], sigma)[0].clamp_min(1e-6)
        return band * x + (1.0 - band) * fill


class BorderFilld(MapTransform):
    """
    Dictionary version of :class:`BorderFill` storing the pseudo-healthy image of ``keys``, the training target of
    DiffSeg's healthy model (``ImageDiffusionPrepareBatch(target_key="healthy")``), at ``output_keys`` (one per key;
    default ``"healthy"`` for one key, ``f"{key}_healthy"`` otherwise).
    """

    backend = BorderFill.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        border_fraction: float = 0.15,
        sigma_fraction: float = 0.25,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        default = ["healthy"] if len(self.keys) == 1 else [f"{k}_healthy" for k in self.keys]
        outs = default if output_keys is None else list(ensure_tuple(output_keys))
        if len(outs) != len(self.keys):
            raise ValueError(f"output_keys {outs} must match keys {list(self.keys)} one to one.")
        self.output_keys = outs
        self.fill = BorderFill(border_fraction, sigma_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.fill(d[key])
        return d


def border_patch_starts(
    spatial_shape: Sequence[int],
    patch_size: Sequence[int],
    border_fraction: float,
    num_samples: int,
    rng: np.random.RandomState,
) -> list[tuple[int, ...]]:
    """
    ``num_samples`` random start corners (drawn with ``rng``) of ``patch_size`` patches lying entirely inside the
    border band of an image of ``spatial_shape`` ``(H, W[, D])``; ``ValueError`` for a patch larger than the image.

    The band along axis ``a`` is ``max(patch_size[a], round(border_fraction * spatial_shape[a]))`` voxels wide at
    both ends. For each patch an axis and a side (low/high) are drawn, with probability proportional to the band's
    area, the start along that axis is drawn inside the band and the start along the other axes anywhere in the image.
    """
    shape = tuple(int(s) for s in spatial_shape)
    size = tuple(int(p) for p in patch_size)
    if len(size) != len(shape) or any(p > s or p < 1 for p, s in zip(size, shape)):
        raise ValueError(
            f"patch_size {size} must have one entry per spatial axis, each in [1, image size], for an image of "
            f"spatial shape {shape}."
        )
    bands = [min(s, max(p, int(round(border_fraction * s)))) for s, p in zip(shape, size)]
    # area of the band strips along each axis (both sides), used to pick axes fairly
    weights = np.array([b * np.prod([s for j, s in enumerate(shape) if j != a]) for a, b in enumerate(bands)], float)
    starts = []
    for _ in range(num_samples):
        axis = int(rng.choice(len(shape), p=weights / weights.sum()))
        start = [int(rng.randint(0, s - p + 1)) for s, p in zip(shape, size)]
        low = int(rng.randint(0, bands[axis] - size[axis] + 1))
        start[axis] = low if rng.rand() < 0.5 else shape[axis] - size[axis] - low
        starts.append(tuple(start))
    return starts


class RandBorderPatchd(Randomizable, MapTransform):
    """
    Sample ``num_samples`` patches from the border band of channel-first images (the same locations for every key,
    which must share one spatial shape): DiffSeg's mask-free healthy-skin training data (see the module docstring).
    Returns a list of ``num_samples`` dicts like :class:`monai.transforms.RandSpatialCropSamplesd` (so a MONAI
    ``DataLoader`` flattens them into the batch): patches at ``keys``, corner at ``"patch_start"``, others copied.

    Args:
        keys: keys of the images ``(C, H, W[, D])``.
        patch_size: patch size (int for every axis, or one per axis); a multiple of the denoiser's ``size_divisor``.
        num_samples: patches per image.
        border_fraction: band width as a fraction of the image size, in ``(0, 0.5]`` (at least the patch size).
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | Sequence[int],
        num_samples: int = 4,
        border_fraction: float = 0.2,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if not 0.0 < float(border_fraction) <= 0.5:
            raise ValueError(f"border_fraction must be in (0, 0.5], got {border_fraction}.")
        self.patch_size = patch_size
        self.num_samples = int(num_samples)
        self.border_fraction = float(border_fraction)
        self._starts: list[tuple[int, ...]] = []

    def randomize(self, data: Sequence[int]) -> None:
        """Draw the patch corners for an image of spatial shape ``data``."""
        size = ensure_tuple_rep(self.patch_size, len(data))
        self._starts = border_patch_starts(data, size, self.border_fraction, self.num_samples, self.R)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return [dict(d) for _ in range(self.num_samples)]
        shapes = {tuple(d[k].shape[1:]) for k in keys}
        if len(shapes) > 1:
            raise ValueError(f"images at keys {keys} must share one spatial shape, got {sorted(shapes)}.")
        spatial = shapes.pop()
        self.randomize(spatial)
        size = ensure_tuple_rep(self.patch_size, len(spatial))
        out = []
        for start in self._starts:
            item = dict(d)
            region = tuple(slice(s, s + p) for s, p in zip(start, size))
            for key in keys:
                img = convert_to_tensor(d[key], track_meta=False)  # patch positions carry no useful metadata
                item[key] = img[(slice(None), *region)].clone()
            item["patch_start"] = torch.as_tensor(start)
            out.append(item)
        return out


RandBorderPatchD = RandBorderPatchDict = RandBorderPatchd
BorderFillD = BorderFillDict = BorderFilld


#: where DiffSeg's healthy model gets its training targets (see the module docstring and the bundle README)
HEALTHY_SOURCES = ("border_fill", "border_patches", "folder")


class HealthySource:
    """
    The training set-up of DiffSeg's healthy model for one ``source`` of healthy-skin data, so that a bundle wires
    the choice instead of branching on it (:meth:`datalist` gives its data list):

    - ``"border_fill"`` (bundle default): every lesion image paired with its :class:`BorderFilld` pseudo-healthy
      target (key ``"healthy"``), inserted before augmentation so both are flipped alike: the paired scheme *noised
      lesion image -> healthy image* of the reference code, with targets computed instead of collected;
    - ``"border_patches"``: unpaired :class:`RandBorderPatchd` patches from the border band, after augmentation
      (band at least 1/4 of the image so that patches fit);
    - ``"folder"``: the user's healthy images from ``healthy_dir`` (image-level supervision), no extra transform.

    Args:
        source: one of :data:`HEALTHY_SOURCES`.
        healthy_dir: folder of healthy images (``"folder"`` only).
        border_fraction: lesion-free border band, as a fraction of each side.
        fill_sigma_fraction: ``BorderFilld``'s Gaussian width, as a fraction of the image size.
        patch_size, patches_per_image: ``RandBorderPatchd``'s patch size and patches drawn per image.

    Attributes:
        pre_augmentation, post_augmentation: transforms to put before / after the augmentation.
        target_key: key of the paired target for :class:`monai_diffseg.engines.ImageDiffusionPrepareBatch`
            (``None``: the image is its own target).
    """

    def __init__(
        self,
        source: str = "border_fill",
        healthy_dir: str | None = None,
        border_fraction: float = 0.15,
        fill_sigma_fraction: float = 0.25,
        patch_size: int | Sequence[int] = 64,
        patches_per_image: int = 4,
    ) -> None:
        if source not in HEALTHY_SOURCES:
            raise ValueError(f"healthy_source must be one of {HEALTHY_SOURCES}, got {source!r}.")
        if source == "folder" and not healthy_dir:
            raise ValueError("healthy_source='folder' needs healthy_dir, a folder of healthy-skin images.")
        self.source, self.healthy_dir = source, healthy_dir
        self.pre_augmentation: list[Transform] = []
        self.post_augmentation: list[Transform] = []
        self.target_key: str | None = None
        if source == "border_fill":
            fill = BorderFilld("image", "healthy", border_fraction=border_fraction, sigma_fraction=fill_sigma_fraction)
            self.pre_augmentation, self.target_key = [fill], "healthy"
        elif source == "border_patches":
            patches = RandBorderPatchd("image", patch_size, patches_per_image, max(border_fraction, 0.25))
            self.post_augmentation = [patches]

    def datalist(self, lesion_datalist: list[dict]) -> list[dict]:
        """The healthy model's data list: the user's healthy images (``"folder"``) or the lesion images."""
        return image_folder_datalist(self.healthy_dir, None) if self.source == "folder" else lesion_datalist
