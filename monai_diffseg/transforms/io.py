# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Reading and writing 2D images (PNG, JPEG, BMP, GIF, TIFF) the way real archives need it.

Public archives mix colour modes (grayscale, palette, RGBA, 16-bit grayscale) inside one "RGB" set, ship the odd
truncated or empty file, and now and then a mask whose size differs from its image. MONAI's ``LoadImaged`` with
``PILReader`` reads each as stored, so such a file surfaces later as a collate error (``[1, H, W]`` vs
``[3, H, W]``) or as PIL's ``image file is truncated`` without a file name. The transforms here convert the colour
mode (logging each conversion), force the full decode while the file name is known, and check that the keys of one
case (image and mask) have the same size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor, PILReader
from monai.transforms import LoadImage, MapTransform, SaveImage, Transform
from monai.utils import ensure_tuple_rep, look_up_option
from PIL import Image

from monai_diffseg.utils import describe_error

__all__ = [
    "IMAGE_MODES",
    "PILModeConverter",
    "LoadImage2D",
    "LoadImage2Dd",
    "LoadImage2DD",
    "LoadImage2DDict",
    "SaveMapsd",
    "display_range",
]

logger = logging.getLogger(__name__)

#: ``mode`` options: convert to 3-channel RGB, to 1-channel grayscale, or keep as stored (masks, label maps).
IMAGE_MODES: tuple[str, ...] = ("RGB", "L", "as_stored")

# PIL modes that hold more than 8 bits per sample; scaled to 8 bits so that one intensity range fits a whole set
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class PILModeConverter:
    """
    ``converter`` for :class:`monai.data.PILReader`: decode the whole file now and convert its colour mode.

    Decoding inside ``read`` (not lazily when MONAI takes the pixel array) raises a truncated file's error while the
    file name is still at hand. Conversions to ``"RGB"``: grayscale (``L``, ``1``, ``P``, ``LA``) is replicated to
    three channels, the alpha channel of ``RGBA``/``LA`` dropped, ``CMYK``/``YCbCr`` converted by PIL; 16-bit
    grayscale (``I;16``, ``I``) is first scaled to 8 bits (x 255 / 65535) to fit the set's 0-255 intensity range.
    Conversions are logged with the file name: the first :attr:`info_per_kind` of each kind (e.g. ``RGB -> L``) at
    INFO level, the rest at DEBUG (a set of 1000 RGB-stored JPEG masks gives three lines and a notice, not 1000).

    Args:
        mode: ``"RGB"``, ``"L"`` (grayscale) or ``"as_stored"`` (decode only: masks and label maps, whose values must
            not be changed; a palette ``P`` mask keeps its indices).
    """

    info_per_kind: int = 3

    def __init__(self, mode: str = "RGB") -> None:
        self.mode = look_up_option(mode, IMAGE_MODES)
        self._logged: dict[str, int] = {}  # conversions seen per kind, in this process

    def __call__(self, img: Image.Image) -> Image.Image:
        img.load()  # raises OSError for truncated data, with the file still known to the caller
        if self.mode == "as_stored" or img.mode == self.mode:
            return img
        stored, name = img.mode, getattr(img, "filename", "") or "<image>"
        if img.mode in _WIDE_MODES:  # to 8-bit "L"; values above 255 are read as 16-bit (x 255 / 65535)
            arr = np.asarray(img, dtype=np.float64)
            if arr.size and np.nanmax(arr) > 255:
                arr = arr * (255.0 / 65535.0)
            img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        elif img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode != self.mode:
            img = img.convert(self.mode)
        kind = f"{stored} to {self.mode}"
        seen = self._logged[kind] = self._logged.get(kind, 0) + 1
        level = logging.INFO if seen <= self.info_per_kind else logging.DEBUG
        logger.log(level, "converted '%s' from %s", name, kind)
        if seen == self.info_per_kind:
            logger.info("further conversions from %s are logged at DEBUG level", kind)
        return img


class LoadImage2D(Transform):
    """
    Load one 2D image file as a channel-first :class:`monai.data.MetaTensor` ``(C, W, H)`` (MONAI's ``PILReader``
    axis order) with its colour mode converted (:class:`PILModeConverter`). Any failure (missing, empty, truncated or
    non-image file) raises one ``ValueError`` naming the file and the cause.

    Args:
        mode: ``"RGB"`` (``C = 3``), ``"L"`` (``C = 1``) or ``"as_stored"``.
        dtype: data type of the returned tensor.
    """

    def __init__(self, mode: str = "RGB", dtype: Any = np.float32) -> None:
        self.mode = look_up_option(mode, IMAGE_MODES)
        self.reader = PILReader(converter=PILModeConverter(self.mode))
        self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=dtype)

    def __call__(self, filename: PathLike) -> torch.Tensor:
        if not os.path.isfile(filename):
            raise ValueError(f"image file '{filename}' does not exist.")
        if os.path.getsize(filename) == 0:
            raise ValueError(f"image file '{filename}' is empty (0 bytes); replace or remove it.")
        try:
            # the reader passed at call time is the only one tried: no fallback through ITK/nibabel/numpy readers
            return self.loader(filename, reader=self.reader)
        except Exception as err:
            raise ValueError(
                f"cannot read image file '{filename}': {describe_error(err)}. Replace or remove the file "
                "(or list it out of the data list)."
            ) from err


def _describe(shape: tuple[int, ...]) -> str:  # PILReader's axis order is (W, H)
    return f"{shape[0]}x{shape[1]} (WxH)" if len(shape) == 2 else "x".join(map(str, shape))


class LoadImage2Dd(MapTransform):
    """
    Dictionary version of :class:`LoadImage2D` that also checks that the loaded keys of one case have the same
    spatial size, e.g. an image and its mask.

    Args:
        keys: keys holding file paths, e.g. ``["image", "label"]``.
        modes: one mode per key (or one for all): ``"RGB"`` for colour images, ``"L"`` for grayscale (ultrasound),
            ``"as_stored"`` for masks and label maps.
        check_same_size: raise when the loaded keys of a case differ in spatial size; a mask of another size than
            its image would otherwise be stretched onto it silently.
        allow_missing_keys: skip keys that are absent (unlabelled cases).
        same_size_as: a key loaded by an earlier step (e.g. ``"image"``) that the keys loaded here must match in
            spatial size (with ``check_same_size``): loading the mask in its own step after the image keeps the
            check. A bundle does this so that its top-level loader reads the image only and an unlabelled request
            (MONAI Label's ``/infer``) never meets a loader that needs ``"label"``.

    Raises ``ValueError`` when a file cannot be read (naming it), or sizes differ (naming both files and sizes).
    """

    def __init__(
        self,
        keys: KeysCollection,
        modes: Sequence[str] | str = "RGB",
        check_same_size: bool = True,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
        same_size_as: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loaders = [LoadImage2D(m, dtype=dtype) for m in ensure_tuple_rep(modes, len(self.keys))]
        self.check_same_size = check_same_size
        self.same_size_as = same_size_as

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first: tuple[Hashable, Any, tuple[int, ...]] | None = None
        ref = d.get(self.same_size_as) if self.same_size_as is not None else None
        if isinstance(ref, torch.Tensor):  # loaded by an earlier step
            name = ref.meta.get("filename_or_obj", "<in memory>") if isinstance(ref, MetaTensor) else "<in memory>"
            first = (self.same_size_as, name, tuple(int(s) for s in ref.shape[1:]))
        for key, loader in self.key_iterator(d, self.loaders):
            path = d[key]
            d[key] = loader(path)
            shape = tuple(int(s) for s in d[key].shape[1:])
            if first is None:
                first = (key, path, shape)
            elif self.check_same_size and shape != first[2]:
                raise ValueError(
                    f"'{key}' file '{path}' is {_describe(shape)} but '{first[0]}' file '{first[1]}' is "
                    f"{_describe(first[2])}; the files of one case must have the same size (a mask is not stretched "
                    "onto its image). Fix or remove this case."
                )
        return d


LoadImage2DD = LoadImage2DDict = LoadImage2Dd


def display_range(name: str, num_classes: int = 1) -> tuple[float, float]:
    """Value range ``(low, high)`` that :class:`SaveMapsd` maps to 0-255 for an output map named ``name``.

    Probabilities, masks and region maps (e.g. ``"prob"``) lie in [0, 1]; the member variance (``"variance"``) of a
    probability in [0, 1/4]; ``"entropy"`` and ``"mutual_information"`` in nats in [0, ln K] with K = 2 for a binary
    (one-channel sigmoid) output and K = ``num_classes`` (the network's output channels) for a softmax output.
    """
    if name == "variance":
        return 0.0, 0.25
    if name in ("entropy", "mutual_information"):
        return 0.0, math.log(2 if num_classes <= 1 else num_classes)
    return 0.0, 1.0


class SaveMapsd(MapTransform):
    """
    Write several output maps of a case as 8-bit images (PNG like the input by default) with one
    :class:`monai.transforms.SaveImage` each, named ``<case>_<postfix><ext>``. Each map is scaled from its
    :func:`display_range` to 0-255; maps in ``binary_keys`` (masks, consistent/ambiguous regions) are thresholded at
    0.5 first, so a binary map resampled bilinearly back to the original size stays binary.

    Args:
        keys: maps to write, e.g. ``["pred", "prob", "variance", "entropy"]``.
        output_dir: output folder.
        postfixes: file postfix per key; default the key itself (``{"pred": "mask"}`` writes ``<case>_mask.png``).
        output_ext: file extension.
        num_classes: network output channels, for the entropy range (see :func:`display_range`).
        binary_keys: keys holding binary maps.
        allow_missing_keys: skip absent keys (e.g. maps not requested).
        channel_names: one name per channel of multi-label maps (e.g. ``["disc", "cup"]``): each channel is written
            as its own 8-bit image ``<case>_<name>_<postfix><ext>`` (``<case>_cup_prob.png``); without it a map is
            written as stored (several channels become one multi-channel image, e.g. a grey + alpha PNG).
        save_kwargs: other :class:`monai.transforms.SaveImage` arguments (``separate_folder``, ``data_root_dir`` ...).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: PathLike = "./",
        postfixes: Mapping[str, str] | None = None,
        output_ext: str = ".png",
        num_classes: int = 1,
        binary_keys: Sequence[str] = ("pred", "mask", "consistent", "ambiguous"),
        allow_missing_keys: bool = True,
        channel_names: Sequence[str] | None = None,
        **save_kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        postfixes = dict(postfixes or {})
        options = {"resample": False, "separate_folder": False, "print_log": False, **save_kwargs}
        fixed = {"output_dir": output_dir, "output_ext": output_ext, "output_dtype": np.uint8, "scale": None}
        self.channel_names = list(channel_names) if channel_names else None
        names = [f"{c}_" for c in self.channel_names] if self.channel_names else [""]
        self.savers = {
            key: [SaveImage(output_postfix=n + postfixes.get(str(key), str(key)), **fixed, **options) for n in names]
            for key in self.keys
        }
        self.ranges = {key: display_range(str(key), num_classes) for key in self.keys}
        self.binary_keys = set(binary_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            low, high = self.ranges[key]
            value = (d[key] >= 0.5).float() if key in self.binary_keys else d[key]
            scaled = torch.round(((value - low) / (high - low)).clamp(0, 1) * 255).to(torch.uint8)
            savers = self.savers[key]
            if self.channel_names and scaled.shape[0] != len(savers):
                raise ValueError(
                    f"SaveMapsd: channel_names {self.channel_names} name {len(savers)} channels but d['{key}'] has "
                    f"shape {tuple(scaled.shape)} (channel first); pass one name per channel."
                )
            for c, saver in enumerate(savers):
                saver(scaled[c : c + 1] if self.channel_names else scaled)
        return d
