# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data-list builders for optic disc and cup segmentation: REFUGE (2018 challenge release) and Drishti-GS1.

REFUGE ships one mask per image (``0`` = cup, ``128`` = rim, ``255`` = background); Drishti-GS1 ships two soft maps per
image (disc and cup, each pixel = fraction of the 4 experts who marked it). Both become items that
:class:`monai_diffseg.transforms.FundusLabeld` turns into a 2-channel label (channel 0 disc, channel 1 cup):

- REFUGE: ``{"image", "label", "case"[, "glaucoma"]}``, ``label`` the coded BMP;
- Drishti-GS1: ``{"image", "label", "label_cup", "expert_threshold", "case"}``, ``label`` the disc soft map,
  ``label_cup`` the cup soft map and ``expert_threshold`` how many of the 4 experts make a pixel foreground.

References:
    - Orlando et al., "REFUGE Challenge: A unified framework for evaluating automated methods for glaucoma assessment
      from fundus photographs", Medical Image Analysis 59, 2020.
    - Sivaswamy et al., "Drishti-GS: Retinal image dataset for optic nerve head (ONH) segmentation", ISBI 2014.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

from monai.config import PathLike
from monai.utils import look_up_option

from monai_diffseg.data.isic2018 import image_folder_datalist
from monai_diffseg.data.splits import split_datalist
from monai_diffseg.data.utils import check_dir, check_labels_option, check_pairs, format_names, subfolders

__all__ = [
    "DRISHTI_GS_SPLITS",
    "REFUGE_SPLIT_FOLDERS",
    "REFUGE_SPLITS",
    "drishti_gs_datalist",
    "fundus_datalist",
    "fundus_layout",
    "fundus_train_val_datalists",
    "refuge_datalist",
]

logger = logging.getLogger(__name__)

REFUGE_SPLITS: tuple[str, ...] = ("training", "validation", "test")
"""Official REFUGE 2018 splits (400 images each)."""

REFUGE_SPLIT_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "training": (("Training400", "REFUGE-Training400"), ("Annotation-Training400",)),
    "validation": (("REFUGE-Validation400", "Validation400"), ("REFUGE-Validation400-GT", "Validation400-GT")),
    "test": (("Test400", "REFUGE-Test400"), ("REFUGE-Test-GT", "Test400-GT", "REFUGE-Test400-GT")),
}
"""``split -> (image folder names, ground-truth folder names)`` as the challenge's zip files unpack (the first name is
the official one); each is searched up to 3 levels below ``dataset_dir`` (the zips sometimes nest a folder in a folder
of the same name). Masks are the ``*.bmp`` under the ground-truth folder's ``Disc_Cup_Masks``."""

DRISHTI_GS_SPLITS: tuple[str, ...] = ("training", "test")
"""Official Drishti-GS1 splits (50 training, 51 test images)."""

_DRISHTI_SPLIT_FOLDERS = {"training": "Training", "test": "Test"}
_DRISHTI_SOFTMAPS = {"label": "_ODsegSoftmap", "label_cup": "_cupsegSoftmap"}
_FLAT_FOLDERS = ("images", "disc", "cup")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GLAUCOMA_FOLDERS = {"glaucoma": 1, "g": 1, "non-glaucoma": 0, "n": 0, "normal": 0}
_MAX_DEPTH = 3
_NUM_EXPERTS = 4


def _find_dirs(root: str, names: Sequence[str], max_depth: int = _MAX_DEPTH) -> list[str]:
    """Folders named one of ``names`` (case-insensitive) at most ``max_depth`` levels below ``root`` (``root`` itself
    included), shallowest first; macOS ``__MACOSX`` trees are skipped."""
    wanted = {n.lower() for n in names}
    found: list[str] = []
    level = [root]
    for _ in range(max_depth + 1):
        found += sorted(d for d in level if os.path.basename(d).lower() in wanted)
        level = [sub for d in level for sub in subfolders(d)]
    return found


def _files_by_stem(folder: str, exts: Sequence[str], what: str) -> dict[str, str]:
    """``stem -> path`` of the files with ``exts`` anywhere under ``folder`` (sorted walk; hidden files skipped);
    ``ValueError`` naming both files when one stem occurs twice."""
    ext_set = {e.lower() for e in exts}
    index: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith("."))
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if name.startswith(".") or ext.lower() not in ext_set:
                continue
            path = os.path.join(dirpath, name)
            if stem in index:
                raise ValueError(f"{what} '{stem}' occurs twice under '{folder}': '{index[stem]}' and '{path}'.")
            index[stem] = path
    return index


def _glaucoma_of(path: str) -> int | None:
    """1 / 0 when the file's parent folder names the diagnosis (``Glaucoma``/``G``, ``Non-Glaucoma``/``N``)."""
    return _GLAUCOMA_FOLDERS.get(os.path.basename(os.path.dirname(path)).lower())


def refuge_datalist(
    dataset_dir: PathLike, split: str = "training", labels: bool | Literal["auto"] = "auto"
) -> list[dict[str, Any]]:
    """Build a data list for one split of the REFUGE 2018 challenge (optic disc and cup segmentation).

    Expected layout under ``dataset_dir`` (the unpacked official zips; see :data:`REFUGE_SPLIT_FOLDERS`)::

        Training400/{Glaucoma,Non-Glaucoma}/g0001.jpg, n0001.jpg
        Annotation-Training400/Disc_Cup_Masks/{Glaucoma,Non-Glaucoma}/g0001.bmp
        REFUGE-Validation400/V0001.jpg         REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp
        Test400/T0001.jpg                      REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/T0001.bmp

    Masks: ``0`` = cup, ``128`` = rim (disc minus cup), ``255`` = background (read by
    :class:`monai_diffseg.transforms.FundusLabeld`). The glaucoma diagnosis is added as ``"glaucoma"`` (1/0) where the
    folder names it (training images, test masks).

    Args:
        dataset_dir: folder holding the unpacked REFUGE folders.
        split: ``"training"``, ``"validation"`` or ``"test"``.
        labels: ``True`` requires a mask per image; ``False`` lists images only; ``"auto"`` uses masks when the split's
            ground-truth folder exists.

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": "g0001"[, "glaucoma": 1]}`` sorted by case.

    Raises:
        FileNotFoundError: ``dataset_dir``, the split's image folder or (``labels=True``) its ``Disc_Cup_Masks``.
        ValueError: bad ``split``/``labels``, no images, a duplicated case, or an image without a mask.
    """
    split = look_up_option(split, REFUGE_SPLITS)
    check_labels_option(labels)
    root = check_dir(dataset_dir, "REFUGE dataset_dir")
    image_names, gt_names = REFUGE_SPLIT_FOLDERS[split]
    image_dirs = _find_dirs(root, image_names)
    if not image_dirs:
        raise FileNotFoundError(
            f"REFUGE {split} image folder not found: expected a folder named {' or '.join(image_names)} (from the "
            f"official zip) under '{root}', which contains: {format_names(sorted(os.listdir(root))) or 'nothing'}."
        )
    images = _files_by_stem(image_dirs[0], (".jpg", ".jpeg", ".png"), "REFUGE image")
    if not images:
        raise ValueError(f"No REFUGE images (*.jpg) found under '{image_dirs[0]}' for split '{split}'.")
    mask_dirs = [m for d in _find_dirs(root, gt_names) for m in _find_dirs(d, ("Disc_Cup_Masks",), 2)]
    if not (mask_dirs if labels == "auto" else labels):
        return [_refuge_item(images[c], None, c) for c in sorted(images)]
    if not mask_dirs:
        raise FileNotFoundError(
            f"REFUGE {split} masks not found: expected '{gt_names[0]}/Disc_Cup_Masks' under '{root}'. Pass "
            "labels=False (or 'auto') to list images only."
        )
    masks = _files_by_stem(mask_dirs[0], (".bmp", ".png"), "REFUGE mask")
    missing = [
        (os.path.basename(images[c]), os.path.join(mask_dirs[0], f"<Glaucoma|Non-Glaucoma|G|N|.>/{c}.bmp"))
        for c in sorted(images)
        if c not in masks
    ]
    check_pairs(missing, sorted(os.path.basename(masks[c]) for c in masks if c not in images), mask_dirs[0])
    return [_refuge_item(images[c], masks[c], c) for c in sorted(images)]


def _refuge_item(image: str, mask: str | None, case: str) -> dict[str, Any]:
    item: dict[str, Any] = {"image": image, "case": case}
    if mask is not None:
        item["label"] = mask
    glaucoma = _glaucoma_of(image)
    if glaucoma is None and mask is not None:
        glaucoma = _glaucoma_of(mask)
    if glaucoma is not None:
        item["glaucoma"] = int(glaucoma)
    return item


def _check_expert_threshold(expert_threshold: Any) -> int:
    if isinstance(expert_threshold, bool) or not isinstance(expert_threshold, int):
        raise ValueError(f"expert_threshold must be an integer 1-{_NUM_EXPERTS}, got {expert_threshold!r}.")
    if not 1 <= expert_threshold <= _NUM_EXPERTS:
        raise ValueError(
            f"expert_threshold must be 1-{_NUM_EXPERTS} (how many of the {_NUM_EXPERTS} Drishti-GS experts mark a "
            f"pixel for it to count as foreground), got {expert_threshold}."
        )
    return expert_threshold


def drishti_gs_datalist(
    dataset_dir: PathLike,
    split: str = "training",
    labels: bool | Literal["auto"] = "auto",
    expert_threshold: int = 2,
) -> list[dict[str, Any]]:
    """Build a data list for Drishti-GS1 (optic disc and cup, soft maps of 4 experts).

    Two layouts under ``dataset_dir`` are recognised:

    - the official release (``Drishti-GS1_files/`` may be ``dataset_dir`` itself or a folder below it)::

        Drishti-GS1_files/Training/Images/drishtiGS_002.png   (mirrors may add GLAUCOMA/ NORMAL/ subfolders)
        Drishti-GS1_files/Training/GT/drishtiGS_002/SoftMap/drishtiGS_002_ODsegSoftmap.png, ..._cupsegSoftmap.png
        Drishti-GS1_files/Test/Images/...,  Test/Test_GT/<case>/SoftMap/...  (the test ground truth came later)

    - a flattened copy: ``images/<case>.{jpg,png}``, ``disc/<case>.png``, ``cup/<case>.png``; it holds one set, listed
      whatever ``split`` is (logged).

    Soft maps store the fraction of the 4 experts who marked a pixel (0, 64, 128, 191, 255);
    :class:`monai_diffseg.transforms.FundusLabeld` counts a pixel as disc / cup when at least ``expert_threshold``
    experts marked it.

    Args:
        dataset_dir: folder holding ``Drishti-GS1_files`` (or its content) or the flat ``images/disc/cup`` folders.
        split: ``"training"`` or ``"test"`` (official layout).
        labels: as in :func:`refuge_datalist`.
        expert_threshold: 1-4, how many experts make a pixel foreground (2: majority-or-tie consensus, the usual one).

    Returns:
        Items ``{"image", "label": disc soft map, "label_cup": cup soft map, "expert_threshold", "case"}`` sorted by
        case (images only without labels).

    Raises:
        FileNotFoundError: ``dataset_dir`` or the split's folders are missing.
        ValueError: bad arguments, no images, a duplicated case, or an image without both soft maps.
    """
    split = look_up_option(split, DRISHTI_GS_SPLITS)
    check_labels_option(labels)
    threshold = _check_expert_threshold(expert_threshold)
    root = check_dir(dataset_dir, "Drishti-GS dataset_dir")
    official = [d for d in _find_dirs(root, ("Training", "Test")) if os.path.isdir(os.path.join(d, "Images"))]
    if not official and os.path.isdir(os.path.join(root, "images")):
        return _drishti_flat(root, split, labels, threshold)
    split_dirs = [d for d in official if os.path.basename(d).lower() == _DRISHTI_SPLIT_FOLDERS[split].lower()]
    if not split_dirs:
        raise FileNotFoundError(
            f"Drishti-GS {split} folder not found: expected 'Drishti-GS1_files/{_DRISHTI_SPLIT_FOLDERS[split]}/Images' "
            f"(official release) or flat 'images/', 'disc/', 'cup/' folders under '{root}', which contains: "
            f"{format_names(sorted(os.listdir(root))) or 'nothing'}."
        )
    split_dir = split_dirs[0]
    images = _files_by_stem(os.path.join(split_dir, "Images"), _IMAGE_EXTS, "Drishti-GS image")
    if not images:
        raise ValueError(f"No Drishti-GS images found under '{os.path.join(split_dir, 'Images')}'.")
    gt_dirs = [os.path.join(split_dir, g) for g in sorted(os.listdir(split_dir)) if g.lower().endswith("gt")]
    gt_dirs = [g for g in gt_dirs if os.path.isdir(g)]
    if not (gt_dirs if labels == "auto" else labels):
        return [{"image": images[c], "case": c} for c in sorted(images)]
    if not gt_dirs:
        raise FileNotFoundError(
            f"Drishti-GS {split} ground truth not found: expected a 'GT' (or 'Test_GT') folder in '{split_dir}'. "
            "Pass labels=False (or 'auto') to list images only."
        )
    maps = _files_by_stem(gt_dirs[0], (".png",), "Drishti-GS soft map")
    datalist: list[dict[str, Any]] = []
    missing: list[tuple[str, str]] = []
    for case in sorted(images):
        files = {key: maps.get(case + suffix) for key, suffix in _DRISHTI_SOFTMAPS.items()}
        absent = [s for k, s in _DRISHTI_SOFTMAPS.items() if files[k] is None]
        if absent:
            expected = os.path.join(gt_dirs[0], case, "SoftMap", case + absent[0] + ".png")
            missing.append((os.path.basename(images[case]), expected))
            continue
        datalist.append({"image": images[case], **files, "expert_threshold": threshold, "case": case})
    suffixes = tuple(_DRISHTI_SOFTMAPS.values())
    orphans = sorted(s for s in maps if s.endswith(suffixes) and s.rsplit("_", 1)[0] not in images)
    check_pairs(missing, orphans, gt_dirs[0])
    return datalist


def _drishti_flat(root: str, split: str, labels: Any, threshold: int) -> list[dict[str, Any]]:
    """The flat ``images/ disc/ cup/`` copy: pairs by case id, the cup maps checked like the disc maps."""
    logger.info("Drishti-GS: flat layout in '%s' (images/, disc/, cup/) has no official splits; listing it all "
                "(split='%s' ignored).", root, split)  # fmt: skip
    image_dir = os.path.join(root, "images")
    if labels is False or (labels == "auto" and not os.path.isdir(os.path.join(root, "disc"))):
        return image_folder_datalist(image_dir, None, image_exts=_IMAGE_EXTS)
    for folder in _FLAT_FOLDERS[1:]:
        check_dir(os.path.join(root, folder), f"Drishti-GS flat '{folder}' folder")
    disc = image_folder_datalist(image_dir, os.path.join(root, "disc"), image_exts=_IMAGE_EXTS, mask_exts=(".png",))
    cup = image_folder_datalist(image_dir, os.path.join(root, "cup"), image_exts=_IMAGE_EXTS, mask_exts=(".png",))
    return [{**d, "label_cup": c["label"], "expert_threshold": threshold} for d, c in zip(disc, cup)]


def fundus_layout(dataset_dir: PathLike) -> str:
    """``"refuge"`` or ``"drishti_gs"``: the layout found under ``dataset_dir`` (see the two builders);
    ``FileNotFoundError`` listing what was looked for when neither is there."""
    root = check_dir(dataset_dir, "Fundus dataset_dir")
    if any(_find_dirs(root, names) for names, _ in REFUGE_SPLIT_FOLDERS.values()):
        return "refuge"
    flat = all(os.path.isdir(os.path.join(root, f)) for f in _FLAT_FOLDERS)
    official = any(os.path.isdir(os.path.join(d, "Images")) for d in _find_dirs(root, ("Training", "Test")))
    if flat or official:
        return "drishti_gs"
    raise FileNotFoundError(
        f"No REFUGE (Training400/, REFUGE-Validation400/, Test400/) or Drishti-GS1 (Drishti-GS1_files/Training/Images, "
        f"or flat images/ disc/ cup/) folders found under '{root}', which contains: "
        f"{format_names(sorted(os.listdir(root))) or 'nothing'}."
    )


def fundus_datalist(
    dataset_dir: PathLike,
    split: str = "test",
    labels: bool | Literal["auto"] = "auto",
    expert_threshold: int = 2,
) -> list[dict[str, Any]]:
    """The data list of ``split`` for whichever layout :func:`fundus_layout` finds: :func:`refuge_datalist` or
    :func:`drishti_gs_datalist` (``expert_threshold`` is used by Drishti-GS only)."""
    if fundus_layout(dataset_dir) == "refuge":
        return refuge_datalist(dataset_dir, split, labels)
    return drishti_gs_datalist(dataset_dir, split, labels, expert_threshold)


def fundus_train_val_datalists(
    dataset_dir: PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    expert_threshold: int = 2,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation data lists for REFUGE or Drishti-GS1 (layout found by :func:`fundus_layout`).

    REFUGE: the official training split, and the official validation split when it is there with its masks; otherwise
    (and always for Drishti-GS1, which has no validation split) a seeded holdout of ``val_fraction`` of the training
    cases (:func:`~monai_diffseg.data.split_datalist`, at least one case).

    Args:
        dataset_dir: dataset folder.
        val_fraction: holdout fraction in (0, 1), used without an official validation split.
        seed: seed of the holdout.
        expert_threshold: Drishti-GS1 only, see :func:`drishti_gs_datalist`.

    Returns:
        ``(train_list, val_list)``, disjoint, sorted by case.

    Raises:
        FileNotFoundError, ValueError: as the builders; ``val_fraction`` outside (0, 1); fewer than 2 training cases.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    layout = fundus_layout(dataset_dir)
    if layout == "refuge":
        train = refuge_datalist(dataset_dir, "training", labels=True)
        try:
            val = refuge_datalist(dataset_dir, "validation", labels=True)
        except FileNotFoundError:
            val = []
        if val:
            logger.info("REFUGE: official validation split (%d cases), %d training cases.", len(val), len(train))
            return train, val
    else:
        train = drishti_gs_datalist(dataset_dir, "training", labels=True, expert_threshold=expert_threshold)
    if len(train) < 2:
        raise ValueError(f"Cannot hold out validation cases from {len(train)} training case(s) in '{dataset_dir}'.")
    train, val = split_datalist(train, (1.0 - float(val_fraction), float(val_fraction)), seed=seed)
    logger.info(
        "%s: seeded holdout (fraction=%g, seed=%d): %d training, %d validation cases.",
        layout, val_fraction, seed, len(train), len(val),
    )  # fmt: skip
    return train, val
