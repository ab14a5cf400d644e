# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data-list builders for ISIC 2018 Task 1 and flat ``images/`` + ``masks/`` folder layouts.

They return MONAI data lists ``[{"image": abs_path, "label": abs_path, "case": id}, ...]``, ready for
:class:`monai.data.Dataset` and ``LoadImaged(keys=["image", "label"])``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Literal

from monai.config import PathLike
from monai.utils import look_up_option

from .splits import split_datalist
from .utils import check_dir, check_labels_option, check_pairs, index_by_case

__all__ = [
    "ISIC2018_SPLIT_FOLDERS",
    "ISIC2018_SPLITS",
    "image_folder_datalist",
    "isic2018_datalist",
    "isic2018_train_val_datalists",
]

logger = logging.getLogger(__name__)

ISIC2018_SPLITS: tuple[str, ...] = ("training", "validation", "test")
"""Official ISIC 2018 Task 1 splits."""

ISIC2018_SPLIT_FOLDERS: dict[str, tuple[str, str]] = {
    "training": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
"""``split -> (input image folder, ground-truth mask folder)`` as released by the challenge."""

# Only ``ISIC_<digits>.<ext>`` are images; this also skips LICENSE.txt/ATTRIBUTION.txt, macOS ``._*``
# resource forks and ISIC 2017-style ``*_superpixels.png`` files that some mirrors still ship.
_ISIC_IMAGE_RE = re.compile(r"^(ISIC_\d+)\.(jpe?g|png)$", re.IGNORECASE)
_ISIC_MASK_SUFFIX = "_segmentation.png"
_DEFAULT_MASK_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def isic2018_datalist(
    dataset_dir: PathLike,
    split: str = "training",
    labels: bool | Literal["auto"] = "auto",
) -> list[dict[str, str]]:
    """Build a data list for one split of ISIC 2018 Task 1 (lesion boundary segmentation).

    Expected layout under ``dataset_dir`` (see :data:`ISIC2018_SPLIT_FOLDERS`)::

        ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
        ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
        (likewise ``Validation`` and ``Test``)

    Only ``ISIC_<digits>.jpg|.jpeg|.png`` (any case) count as images; ``LICENSE.txt`` and other files are ignored.

    Args:
        dataset_dir: folder that holds the official ISIC 2018 folders.
        split: one of ``"training"``, ``"validation"``, ``"test"``.
        labels: ``True`` requires a mask for every image; ``False`` lists images only (no ``"label"`` key); ``"auto"``
            uses masks when the split's ground-truth folder exists.

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": "ISIC_0000000"}`` sorted by case.

    Raises:
        FileNotFoundError: ``dataset_dir``, the split's input folder or (``labels=True``) its ground-truth folder.
        ValueError: bad ``split``/``labels``, no images, or (with masks) an image without ``<case>_segmentation.png``.
    """
    split = look_up_option(split, ISIC2018_SPLITS)
    check_labels_option(labels)
    root = check_dir(dataset_dir, "ISIC 2018 dataset_dir")
    input_dir, gt_dir = (os.path.join(root, name) for name in ISIC2018_SPLIT_FOLDERS[split])
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(
            f"ISIC 2018 {split} input folder not found: expected '{input_dir}'. "
            f"'{root}' contains: {sorted(os.listdir(root)) or 'nothing'}."
        )
    images = index_by_case(input_dir, lambda n: (m := _ISIC_IMAGE_RE.match(n)) and m.group(1), "Case", "image")
    if not images:
        raise ValueError(f"No ISIC images (ISIC_<id>.jpg/.jpeg/.png) found in '{input_dir}' for split '{split}'.")

    if not (os.path.isdir(gt_dir) if labels == "auto" else labels):
        return [{"image": images[case], "case": case} for case in sorted(images)]
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(
            f"ISIC 2018 {split} ground-truth folder not found: expected '{gt_dir}'. "
            "Pass labels=False (or 'auto') to list images only."
        )
    # Match masks case-insensitively so archives extracted on case-folding file systems still pair.
    masks = {name.lower(): os.path.join(gt_dir, name) for name in os.listdir(gt_dir)}
    datalist: list[dict[str, str]] = []
    missing: list[tuple[str, str]] = []
    for case in sorted(images):
        mask = masks.get((case + _ISIC_MASK_SUFFIX).lower())
        if mask is None or not os.path.isfile(mask):
            missing.append((os.path.basename(images[case]), os.path.join(gt_dir, case + _ISIC_MASK_SUFFIX)))
        else:
            datalist.append({"image": images[case], "label": mask, "case": case})
    used = {os.path.basename(d["label"]).lower() for d in datalist}
    orphans = sorted(os.path.basename(p) for k, p in masks.items() if k.endswith(_ISIC_MASK_SUFFIX) and k not in used)
    check_pairs(missing, orphans, gt_dir)
    return datalist


def isic2018_train_val_datalists(
    dataset_dir: PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and validation data lists for ISIC 2018 Task 1.

    Training is the official training split (masks required); validation the official validation split when both its
    folders exist, else a seeded holdout (:func:`split_datalist`) of ``val_fraction`` (at least one case) of training.

    Args:
        dataset_dir: folder that holds the official ISIC 2018 folders.
        val_fraction: holdout fraction in (0, 1), used only without the official validation split.
        seed: seed of the holdout selection.

    Returns:
        ``(train_list, val_list)``, disjoint, each sorted by case, items as in :func:`isic2018_datalist`.

    Raises:
        FileNotFoundError, ValueError: as :func:`isic2018_datalist`; ``val_fraction`` outside (0, 1) or a holdout from
            fewer than 2 training cases.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    root = check_dir(dataset_dir, "ISIC 2018 dataset_dir")
    train = isic2018_datalist(root, "training", labels=True)
    if all(os.path.isdir(os.path.join(root, name)) for name in ISIC2018_SPLIT_FOLDERS["validation"]):
        val = isic2018_datalist(root, "validation", labels=True)
        logger.info("ISIC 2018: official validation split (%d cases), %d training cases.", len(val), len(train))
        return train, val
    if len(train) < 2:
        raise ValueError(
            f"Cannot hold out validation cases from {len(train)} training case(s) in '{root}' "
            "and the official validation split is absent."
        )
    train, val = split_datalist(train, (1.0 - float(val_fraction), float(val_fraction)), seed=seed)
    logger.info(
        "ISIC 2018: official validation split absent in '%s'; seeded holdout (fraction=%g, seed=%d): %d training, "
        "%d validation cases.",
        root,
        val_fraction,
        seed,
        len(train),
        len(val),
    )
    return train, val


def image_folder_datalist(
    image_dir: PathLike,
    mask_dir: PathLike | None,
    mask_suffix: str = "",
    image_exts: Sequence[str] = (".png", ".jpg", ".jpeg"),
    mask_exts: Sequence[str] = _DEFAULT_MASK_EXTS,
    labels: bool = True,
) -> list[dict[str, str]]:
    """Build a data list for flat ``<image_dir>/<id>.<ext>`` + ``<mask_dir>/<id><mask_suffix>.<ext>`` layouts.

    Suits Kvasir-SEG (``images/<id>.jpg`` + ``masks/<id>.jpg``) and flattened PH2 (``images/IMD002.bmp`` +
    ``masks/IMD002_lesion.bmp`` with ``image_exts=(".bmp",)``, ``mask_suffix="_lesion"``). Extensions (masks may use
    another one than images) are matched case-insensitively; hidden files and other extensions are ignored.

    Args:
        image_dir: folder of images.
        mask_dir: folder of masks; ``None`` lists images only.
        mask_suffix: text between the image id and the mask extension.
        image_exts: accepted image extensions (with dot).
        mask_exts: accepted mask extensions (with dot).
        labels: ``False`` lists images only even when ``mask_dir`` is given.

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": id}`` sorted by id (no ``"label"`` without masks).

    Raises:
        FileNotFoundError: ``image_dir`` or (when used) ``mask_dir`` is not an existing folder.
        ValueError: no images, an id with several images or masks, or an image without a mask.
    """
    image_root = check_dir(image_dir, "Image folder")
    image_ext_set = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in image_exts}
    mask_ext_set = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in mask_exts}

    def stem_of(name: str, ext_set: set[str], suffix: str = "") -> str | None:
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in ext_set or not stem.endswith(suffix):
            return None
        return stem[: len(stem) - len(suffix)] if suffix else stem

    images = index_by_case(image_root, lambda n: stem_of(n, image_ext_set), "Image id", "file")
    if not images:
        raise ValueError(f"No images with extensions {sorted(image_ext_set)} found in '{image_root}'.")
    if mask_dir is None or not labels:
        return [{"image": images[case], "case": case} for case in sorted(images)]
    mask_root = check_dir(mask_dir, "Mask folder")
    masks = index_by_case(mask_root, lambda n: stem_of(n, mask_ext_set, mask_suffix), "Image id", "mask")
    datalist: list[dict[str, str]] = []
    missing: list[tuple[str, str]] = []
    for case in sorted(images):
        if case in masks:
            datalist.append({"image": images[case], "label": masks[case], "case": case})
        else:
            expected = os.path.join(mask_root, f"{case}{mask_suffix}{{{','.join(sorted(mask_ext_set))}}}")
            missing.append((os.path.basename(images[case]), expected))
    check_pairs(missing, sorted(os.path.basename(masks[c]) for c in masks if c not in images), mask_root)
    return datalist
