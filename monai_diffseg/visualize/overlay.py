# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Segmentation overlays: predicted mask as red fill + red contour, ground truth as green contour.

:func:`overlay_mask` renders an RGB uint8 array, :func:`save_overlay` writes it as a PNG atomically and
:class:`SaveOverlayd` does so inside a MONAI post-processing chain, on the original image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries

from monai_diffseg.transforms.io import PILModeConverter
from monai_diffseg.utils import atomic_write

__all__ = ["SaveOverlayd", "overlay_mask", "save_overlay"]

_RED = np.array([255.0, 0.0, 0.0])
_GREEN = np.array([0.0, 255.0, 0.0])


def _to_rgb_uint8(image: Any) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image -> (H, W, 3) uint8 (dtypes as in :func:`overlay_mask`)."""
    img = convert_to_numpy(image)
    if img.ndim == 3 and img.shape[-1] in (1, 3, 4):
        img = img[..., :3] if img.shape[-1] != 1 else img[..., 0]
    if img.ndim != 2 and not (img.ndim == 3 and img.shape[-1] == 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, 3) (channel-last), got {tuple(img.shape)}.")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype in (np.uint8, bool):
        return img.astype(np.uint8) * np.uint8(255 if img.dtype == bool else 1)
    is_float = np.issubdtype(img.dtype, np.floating)
    img = img.astype(np.float64)
    lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
    if is_float and lo >= 0.0 and hi <= 1.0:
        img = img * 255.0
    elif lo < 0.0 or hi > 255.0:
        img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _to_plane(x: Any, name: str, spatial: tuple[int, ...]) -> np.ndarray:
    """(H, W), (1, H, W) or (H, W, 1) array -> (H, W); ``ValueError`` naming ``name`` unless (H, W) is ``spatial``."""
    arr = convert_to_numpy(x)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.shape != spatial:
        raise ValueError(f"{name} shape {arr.shape} does not match image shape {spatial} (H, W).")
    return arr


def _contour(mask: np.ndarray, mode: str, thickness: int) -> np.ndarray:
    """Boundary pixels of a bool mask (H, W), dilated to ``thickness`` pixels."""
    edge = find_boundaries(mask, mode=mode)
    if thickness > 1:
        edge = ndimage.binary_dilation(edge, iterations=thickness - 1)
    return edge


def overlay_mask(
    image: Any,
    mask: Any,
    label: Any | None = None,
    prob: Any | None = None,
    alpha: float = 0.4,
    thickness: int | None = None,
) -> np.ndarray:
    """Render a predicted mask (and optionally ground truth) over an image.

    The prediction is a semi-transparent red fill plus a red contour on its inner boundary; the ground truth is a green
    contour on its outer boundary, so both stay visible where they agree.

    Args:
        image: (H, W) or (H, W, 3) (or 1/4 channels) array/tensor of any dtype: uint8 as is, bool -> {0, 255}, floats
            in [0, 1] scaled by 255, other ranges outside [0, 255] min-max rescaled.
        mask: predicted mask (H, W), foreground where > 0.5 (a singleton channel is squeezed).
        label: optional ground-truth mask (H, W), same convention.
        prob: optional foreground probability (H, W) in [0, 1]; when given, the red fill opacity is ``alpha * prob``
            everywhere (showing uncertain regions) instead of ``alpha`` inside ``mask``.
        alpha: fill opacity in [0, 1].
        thickness: contour width in pixels; default ``max(1, min(H, W) // 256)`` so contours stay visible on
            full-resolution dermoscopy images.

    Returns:
        RGB uint8 array (H, W, 3).

    Raises:
        ValueError: unsupported or mismatched shapes (both are named), ``alpha`` or ``prob`` outside [0, 1].
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    rgb = _to_rgb_uint8(image)
    spatial = rgb.shape[:2]
    pred = _to_plane(mask, "mask", spatial) > 0.5
    if thickness is None:
        thickness = max(1, min(spatial) // 256)
    weight = pred if prob is None else _to_plane(prob, "prob", spatial).astype(np.float64)
    if prob is not None and weight.size and (weight.min() < 0.0 or weight.max() > 1.0):
        raise ValueError(f"prob must be in [0, 1], got range [{weight.min():.3g}, {weight.max():.3g}].")
    weight = weight * float(alpha)
    out = rgb.astype(np.float64) * (1.0 - weight[..., None]) + _RED * weight[..., None]
    out[_contour(pred, "inner", thickness)] = _RED
    if label is not None:
        # Outer boundary: a perfect prediction shows both the red and the green line side by side.
        out[_contour(_to_plane(label, "label", spatial) > 0.5, "outer", thickness)] = _GREEN
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_overlay(
    path: PathLike,
    image: Any,
    mask: Any,
    label: Any | None = None,
    prob: Any | None = None,
    alpha: float = 0.4,
) -> str:
    """Render :func:`overlay_mask` (the other arguments are its own) and write it as a PNG atomically (a temporary
    file in the same folder moved into place with :func:`os.replace`, so readers never see a partial file).

    Args:
        path: output file, must end with ``.png``; missing parent folders are created.

    Returns:
        Absolute path of the written PNG.

    Raises:
        ValueError: ``path`` does not end with ``.png`` or errors from :func:`overlay_mask`.
    """
    path = os.path.abspath(os.fspath(path))
    if not path.lower().endswith(".png"):
        raise ValueError(f"Overlay path must end with '.png', got '{path}'.")
    rgb = overlay_mask(image, mask, label=label, prob=prob, alpha=alpha)
    with atomic_write(path, "wb") as f:
        Image.fromarray(rgb).save(f, format="PNG")
    return path


class SaveOverlayd(MapTransform):
    """Save PNG overlays (:func:`save_overlay`) of predicted masks on the original RGB images.

    Meant for the post-processing chain after ``Invertd``: each ``d[key]`` is a channel-first mask ``(1, W, H)`` in the
    axis order of MONAI's ``PILReader`` (which reverses PIL's (H, W)), at the original image size. The source file is
    read from ``d[image_key].meta["filename_or_obj"]`` (or ``d[f"{image_key}_meta_dict"]``), reloaded with PIL as RGB
    (H, W, 3), and the overlay is written to ``<output_dir>/<image basename without extension>_<output_postfix>.png``
    (with ``_<key>`` before the postfix when several keys are given). A mask of another size (e.g. no ``Invertd``) is
    resized with nearest neighbour to the image size, with a single warning per transform instance.

    Args:
        keys: key(s) of predicted masks (1, W, H); several channels are reduced by argmax (> 0 is foreground), as for
            one-hot predictions.
        output_dir: folder for the PNGs (created if needed).
        image_key: key of the input image whose metadata names the source file.
        label_key: optional key of a ground-truth mask (1, W, H), drawn as a green contour.
        output_postfix: suffix of the output file names.
        alpha: fill opacity in [0, 1].
        allow_missing_keys: skip absent mask/label keys instead of raising.
        data_root_dir: when given, the source file's folder relative to it is kept under ``output_dir`` (as
            ``data_root_dir`` of :class:`monai.transforms.SaveImage`): layouts whose images share one name, e.g.
            ``<case>/image.png``, get ``<output_dir>/<case>/image_overlay.png`` instead of overwriting each other.

    Raises:
        ValueError: at call time, when the image's source file name cannot be found, refers to a batch, ``label_key``
            is absent (unless ``allow_missing_keys``) or a mask/label has an unsupported shape.
        FileNotFoundError: at call time, when the source image file does not exist.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: PathLike,
        image_key: str = "image",
        label_key: str | None = None,
        output_postfix: str = "overlay",
        alpha: float = 0.4,
        allow_missing_keys: bool = False,
        data_root_dir: PathLike | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.data_root_dir = None if not data_root_dir else os.path.abspath(os.fspath(data_root_dir))
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        self.output_dir = os.fspath(output_dir)
        self.image_key = image_key
        self.label_key = label_key
        self.output_postfix = output_postfix
        self.alpha = float(alpha)
        self._warned_resize = False
        self._to_rgb = PILModeConverter("RGB")  # one instance: its conversion log lines are counted per kind

    def _to_hw(self, value: Any, name: str, size_hw: tuple[int, int]) -> np.ndarray:
        """Channel-first (C, W, H) mask -> uint8 (H, W) at ``size_hw``, resized by nearest neighbour if needed."""
        arr = convert_to_numpy(value)
        if arr.ndim == 3:
            arr = arr[0] > 0.5 if arr.shape[0] == 1 else np.argmax(arr, axis=0) > 0
        elif arr.ndim != 2:
            raise ValueError(f"SaveOverlayd: d['{name}'] must have shape (C, W, H) or (W, H), got {tuple(arr.shape)}.")
        # PILReader reverses PIL's axes, so MONAI arrays are (W, H); transpose back to image order.
        hw = np.ascontiguousarray((arr > 0.5).T.astype(np.uint8))
        if hw.shape != size_hw:
            if not self._warned_resize:
                warnings.warn(
                    f"SaveOverlayd: d['{name}'] spatial size {hw.shape[::-1]} (W, H) does not match the original "
                    f"image {size_hw[::-1]} (W, H); resizing with nearest neighbour "
                    "(apply Invertd first to avoid this).",
                    stacklevel=2,
                )
                self._warned_resize = True
            hw = np.asarray(Image.fromarray(hw).resize((size_hw[1], size_hw[0]), resample=Image.NEAREST))
        return hw

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Write one overlay per key of ``data`` (the image, carrying its source file in metadata, and the masks);
        returns ``data`` unchanged."""
        d = dict(data) if not isinstance(data, dict) else data
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        if self.image_key not in d:
            raise ValueError(f"SaveOverlayd: image key '{self.image_key}' not in data (keys: {list(d)}).")
        # the source file: MetaTensor metadata, or the legacy ``*_meta_dict``
        img = d[self.image_key]
        meta = img.meta if isinstance(img, MetaTensor) else d.get(f"{self.image_key}_meta_dict", {})
        filename = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        if isinstance(filename, (list, tuple)):
            raise ValueError(
                f"SaveOverlayd expects one item, but d['{self.image_key}'] metadata 'filename_or_obj' lists "
                f"{len(filename)} files; apply it after monai.data.decollate_batch."
            )
        if not filename:
            raise ValueError(
                f"SaveOverlayd: no 'filename_or_obj' in the metadata of d['{self.image_key}']; load it with "
                "LoadImaged (image_only=True gives a MetaTensor) so the source file is known."
            )
        filename = os.fspath(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"SaveOverlayd: source image '{filename}' of d['{self.image_key}'] not found.")
        with Image.open(filename) as pil:  # the same mode conversion as the bundles' loader (16-bit, RGBA, ...)
            rgb = np.asarray(self._to_rgb(pil))
        size_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        if self.label_key is not None and self.label_key not in d and not self.allow_missing_keys:
            raise ValueError(f"SaveOverlayd: label key '{self.label_key}' not in data (keys: {list(d)}).")
        # None = no label key, or an unlabelled case (SupervisedEvaluator sets the label key to None): no contour
        label = None if self.label_key is None else d.get(self.label_key)
        label = None if label is None else self._to_hw(label, str(self.label_key), size_hw)
        base = os.path.splitext(os.path.basename(filename))[0]
        folder = self.output_dir
        if self.data_root_dir is not None:
            rel = os.path.relpath(os.path.dirname(os.path.abspath(filename)), self.data_root_dir)
            if rel != "." and not rel.startswith(".."):  # files outside data_root_dir go to output_dir itself
                folder = os.path.join(self.output_dir, rel)
        for key in keys:
            infix = f"_{key}" if len(self.keys) > 1 else ""
            mask = self._to_hw(d[key], str(key), size_hw)
            path = os.path.join(folder, f"{base}{infix}_{self.output_postfix}.png")
            save_overlay(path, rgb, mask, label=label, alpha=self.alpha)
        return d
