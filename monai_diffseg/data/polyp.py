# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data-list builders for colonoscopy polyp segmentation: Kvasir-SEG and CVC-ClinicDB in their released layouts.

Kvasir-SEG (Jha et al., MMM 2020, https://datasets.simula.no/kvasir-seg/): the official ``kvasir-seg.zip`` extracts to
``Kvasir-SEG/images/<id>.jpg`` + ``Kvasir-SEG/masks/<id>.jpg`` (JPEG masks, lossy: threshold them) and
``Kvasir-SEG/kavsir_bboxes.json``; 1000 images from 332x487 to 1920x1072 px.

CVC-ClinicDB (Bernal et al., CMIG 2015, https://polyp.grand-challenge.org/CVCClinicDB/):
``CVC-ClinicDB/Original/<n>.tif`` + ``CVC-ClinicDB/Ground Truth/<n>.tif`` for ``n`` = 1..612 (384x288 px); the common
re-release adds PNG copies as ``PNG/Original/<n>.png`` + ``PNG/Ground Truth/<n>.png`` (and the TIFFs under ``TIF/``).

The builders return MONAI data lists ``[{"image": abs_path, "label": abs_path, "case": id}, ...]`` (no ``"label"``
for unlabelled lists) ready for ``LoadImaged``/:class:`~monai_diffseg.transforms.LoadImage2Dd`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Literal

from monai.config import PathLike
from monai.utils import look_up_option

from monai_diffseg.data.isic2018 import image_folder_datalist
from monai_diffseg.data.splits import split_datalist
from monai_diffseg.data.utils import check_dir, check_labels_option, check_pairs, index_by_case, subfolders

__all__ = [
    "CVC_CLINICDB_FOLDERS",
    "KVASIR_SEG_FOLDERS",
    "POLYP_FORMATS",
    "cvc_clinicdb_datalist",
    "detect_polyp_format",
    "kvasir_seg_datalist",
    "polyp_datalist",
    "polyp_train_val_datalists",
]

logger = logging.getLogger(__name__)

POLYP_FORMATS: tuple[str, ...] = ("auto", "kvasir_seg", "cvc_clinicdb")
"""``dataset_format`` options: detect from the folder, Kvasir-SEG layout, CVC-ClinicDB layout."""

KVASIR_SEG_FOLDERS: tuple[str, str] = ("images", "masks")
"""Kvasir-SEG ``(image folder, mask folder)``."""

CVC_CLINICDB_FOLDERS: tuple[str, str] = ("Original", "Ground Truth")
"""CVC-ClinicDB ``(image folder, mask folder)`` (in the release root, or under ``TIF/``/``PNG/`` in re-releases)."""

_KVASIR_IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # official JPEG; PraNet-style re-releases use PNG
_CVC_FILE_RE = re.compile(r"^(\d+)\.(tiff?|png|jpe?g|bmp)$", re.IGNORECASE)
_CVC_MASK_DIR_NAMES = ("Ground Truth", "GroundTruth", "Ground_Truth")
_SEARCH_DEPTH = 2  # dataset_dir, its children and grandchildren (e.g. CVC-ClinicDB/PNG/Original)
_EXPECTED = {
    "kvasir_seg": "Kvasir-SEG: 'images/' + 'masks/' (e.g. Kvasir-SEG/images/<id>.jpg, Kvasir-SEG/masks/<id>.jpg)",
    "cvc_clinicdb": "CVC-ClinicDB: 'Original/' + 'Ground Truth/' (e.g. CVC-ClinicDB/Original/1.tif, or "
    "PNG/Original/1.png)",
}


def _child_dir(folder: str, names: tuple[str, ...] | str) -> str | None:
    """Path of the sub-folder of ``folder`` named like one of ``names`` (exact name first, then ignoring case)."""
    names = (names,) if isinstance(names, str) else names
    for name in names:
        if os.path.isdir(os.path.join(folder, name)):
            return os.path.join(folder, name)
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return None
    wanted = {n.lower() for n in names}
    for entry in entries:
        if entry.lower() in wanted and os.path.isdir(os.path.join(folder, entry)):
            return os.path.join(folder, entry)
    return None


def _layout_roots(root: str, holds_layout: Callable[[str], bool]) -> list[str]:
    """The shallowest folders at ``root`` or below (at most :data:`_SEARCH_DEPTH` levels) for which ``holds_layout``
    is true, breadth first and sorted; hidden folders and macOS ``__MACOSX`` are skipped."""
    level = [root]
    for depth in range(_SEARCH_DEPTH + 1):
        found = [f for f in level if holds_layout(f)]
        if found or depth == _SEARCH_DEPTH:
            return found
        level = [d for f in level for d in subfolders(f)]
    return []


def _is_kvasir_root(folder: str) -> bool:
    return _child_dir(folder, KVASIR_SEG_FOLDERS[0]) is not None


def _is_cvc_root(folder: str) -> bool:
    return _child_dir(folder, CVC_CLINICDB_FOLDERS[0]) is not None


def _contents(folder: str) -> str:
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"'{folder}' contains: {shown or 'nothing'}"


def _resolve_root(root: str, dataset_format: str) -> str:
    """The folder that holds the ``dataset_format`` layout at or below ``root``; ``FileNotFoundError`` if none,
    ``ValueError`` if several equally deep ones are ambiguous."""
    holds = _is_kvasir_root if dataset_format == "kvasir_seg" else _is_cvc_root
    found = _layout_roots(root, holds)
    if not found:
        raise FileNotFoundError(
            f"No {_EXPECTED[dataset_format]} layout found in '{root}' or its sub-folders (searched {_SEARCH_DEPTH} "
            f"levels deep); {_contents(root)}. Point dataset_dir at the extracted archive."
        )
    if len(found) > 1 and dataset_format == "cvc_clinicdb":
        # the re-release ships the same frames twice (TIF/ and PNG/): prefer the original TIFFs
        tif = [f for f in found if os.path.basename(f).lower() in ("tif", "tiff")]
        if len(tif) == 1 and all(os.path.basename(f).lower() in ("tif", "tiff", "png") for f in found):
            logger.info("CVC-ClinicDB: both TIF/ and PNG/ copies found under '%s'; using '%s'.", root, tif[0])
            return tif[0]
    if len(found) > 1:
        raise ValueError(
            f"Several {dataset_format} datasets found under '{root}': {found}; pass the one to use as dataset_dir."
        )
    return found[0]


def detect_polyp_format(dataset_dir: PathLike) -> str:
    """Detect which released layout ``dataset_dir`` holds: ``"kvasir_seg"`` or ``"cvc_clinicdb"``.

    A Kvasir-SEG root holds ``images/``; a CVC-ClinicDB root holds ``Original/``. ``dataset_dir`` may be such a root or
    a folder up to two levels above it (``Kvasir-SEG/``, ``CVC-ClinicDB/PNG/``); the shallower layout wins.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or holds neither layout (the message names both).
        ValueError: both layouts at the same depth.
    """
    root = check_dir(dataset_dir, "Polyp dataset_dir")
    level = [root]
    for depth in range(_SEARCH_DEPTH + 1):
        kinds = sorted(
            {k for f in level for k, holds in (("kvasir_seg", _is_kvasir_root), ("cvc_clinicdb", _is_cvc_root))
             if holds(f)}
        )  # fmt: skip
        if len(kinds) == 1:
            return kinds[0]
        if len(kinds) > 1:
            raise ValueError(
                f"'{root}' holds both a Kvasir-SEG and a CVC-ClinicDB layout {depth} level(s) down; set "
                "dataset_format ('kvasir_seg' or 'cvc_clinicdb') or point dataset_dir at one of them."
            )
        level = [d for f in level for d in subfolders(f)]
    raise FileNotFoundError(
        f"Cannot detect the polyp dataset layout in '{root}': expected {_EXPECTED['kvasir_seg']} or "
        f"{_EXPECTED['cvc_clinicdb']}, in dataset_dir or up to {_SEARCH_DEPTH} levels below; {_contents(root)}."
    )


def kvasir_seg_datalist(dataset_dir: PathLike, labels: bool | Literal["auto"] = "auto") -> list[dict[str, str]]:
    """Build a data list of Kvasir-SEG (or any ``images/`` + ``masks/`` polyp set with one mask per image id).

    Expected layout (``dataset_dir`` is the folder that holds ``images/``, or a parent up to two levels above it such
    as the folder the zip was extracted into)::

        Kvasir-SEG/images/cju0qkwl35piu0993l0dewei2.jpg
        Kvasir-SEG/masks/cju0qkwl35piu0993l0dewei2.jpg
        Kvasir-SEG/kavsir_bboxes.json            (ignored)

    Images are ``.jpg``/``.jpeg``/``.png``; masks may use any of PNG/JPEG/BMP/GIF/TIFF. Kvasir-SEG masks are lossy
    JPEGs: threshold them (the bundle uses ``BinaryMaskd(threshold=mask_threshold)``, default 127).

    Args:
        dataset_dir: see above.
        labels: ``True`` requires a mask for every image; ``False`` lists images only; ``"auto"`` uses masks when
            ``masks/`` exists.

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": id}`` sorted by id.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing, holds no ``images/``, or (``labels=True``) no ``masks/``.
        ValueError: bad ``labels``, no images, an id with several files, or an image without a mask.
    """
    check_labels_option(labels)
    root = _resolve_root(check_dir(dataset_dir, "Kvasir-SEG dataset_dir"), "kvasir_seg")
    image_dir = _child_dir(root, KVASIR_SEG_FOLDERS[0])
    mask_dir = _child_dir(root, KVASIR_SEG_FOLDERS[1])
    if labels is True and mask_dir is None:
        raise FileNotFoundError(
            f"Kvasir-SEG mask folder not found: expected '{os.path.join(root, KVASIR_SEG_FOLDERS[1])}' beside "
            f"'{image_dir}'. Pass labels=False (or 'auto') to list images only."
        )
    use_masks = mask_dir is not None and labels is not False
    return image_folder_datalist(image_dir, mask_dir if use_masks else None, image_exts=_KVASIR_IMAGE_EXTS)


def _cvc_case(name: str) -> str | None:
    match = _CVC_FILE_RE.match(name)
    return str(int(match.group(1))) if match else None  # "001.tif" and "1.tif" are the same frame


def cvc_clinicdb_datalist(dataset_dir: PathLike, labels: bool | Literal["auto"] = "auto") -> list[dict[str, str]]:
    """Build a data list of CVC-ClinicDB in its released layout.

    Expected layout (``dataset_dir`` is the folder that holds ``Original/``, or a parent up to two levels above it)::

        CVC-ClinicDB/Original/1.tif ... 612.tif          (official release, RGB TIFF, 384x288)
        CVC-ClinicDB/Ground Truth/1.tif ... 612.tif
      or the re-release with PNG copies:
        PNG/Original/1.png, PNG/Ground Truth/1.png      (TIF/Original, TIF/Ground Truth: the TIFFs, preferred)

    Files are ``<number>.<tif|tiff|png|jpg|bmp>``; other files (``Thumbs.db``, ``.DS_Store``) are ignored. Frames are
    sorted by number and named by it (``"1"`` ... ``"612"``). The 612 frames come from about 30 video sequences:
    consecutive frames show the same polyp, so use CVC-ClinicDB as a test set (the documented use) or split it by
    sequence.

    Args:
        dataset_dir: see above.
        labels: ``True`` requires a mask for every frame; ``False`` lists images only; ``"auto"`` uses masks when
            ``Ground Truth/`` exists.

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": "<number>"}`` sorted by frame number.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing, holds no ``Original/``, or (``labels=True``) no
            ``Ground Truth/``.
        ValueError: bad ``labels``, no frames, a frame number with two files, or a frame without a mask.
    """
    check_labels_option(labels)
    root = _resolve_root(check_dir(dataset_dir, "CVC-ClinicDB dataset_dir"), "cvc_clinicdb")
    image_dir = _child_dir(root, CVC_CLINICDB_FOLDERS[0])
    mask_dir = _child_dir(root, _CVC_MASK_DIR_NAMES)
    images = index_by_case(image_dir, _cvc_case, "CVC-ClinicDB frame", "image")
    if not images:
        raise ValueError(f"No CVC-ClinicDB frames (<number>.tif/.png) found in '{image_dir}'; {_contents(image_dir)}.")
    order = sorted(images, key=int)
    if mask_dir is None:
        if labels is True:
            raise FileNotFoundError(
                f"CVC-ClinicDB mask folder not found: expected '{os.path.join(root, CVC_CLINICDB_FOLDERS[1])}' beside "
                f"'{image_dir}'. Pass labels=False (or 'auto') to list images only."
            )
        return [{"image": images[c], "case": c} for c in order]
    if labels is False:
        return [{"image": images[c], "case": c} for c in order]
    masks = index_by_case(mask_dir, _cvc_case, "CVC-ClinicDB frame", "mask")
    missing = [
        (os.path.basename(images[c]), os.path.join(mask_dir, f"{c}{os.path.splitext(images[c])[1]}"))
        for c in order
        if c not in masks
    ]
    check_pairs(missing, sorted(os.path.basename(masks[c]) for c in masks if c not in images), mask_dir)
    return [{"image": images[c], "label": masks[c], "case": c} for c in order]


def polyp_datalist(
    dataset_dir: PathLike,
    dataset_format: str = "auto",
    labels: bool | Literal["auto"] = "auto",
) -> list[dict[str, str]]:
    """Data list of a polyp dataset in the Kvasir-SEG or the CVC-ClinicDB layout.

    Args:
        dataset_dir: the extracted archive (see :func:`kvasir_seg_datalist` and :func:`cvc_clinicdb_datalist`).
        dataset_format: ``"kvasir_seg"``, ``"cvc_clinicdb"`` or ``"auto"`` (:func:`detect_polyp_format`).
        labels: ``True``, ``False`` or ``"auto"`` (masks when the mask folder exists).

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": id}``, sorted.

    Raises:
        FileNotFoundError, ValueError: as the layout's builder; an unknown ``dataset_format``.
    """
    dataset_format = look_up_option(dataset_format, POLYP_FORMATS)
    if dataset_format == "auto":
        dataset_format = detect_polyp_format(dataset_dir)
        logger.info("Polyp dataset_dir '%s': detected the %s layout.", dataset_dir, dataset_format)
    builder = kvasir_seg_datalist if dataset_format == "kvasir_seg" else cvc_clinicdb_datalist
    return builder(dataset_dir, labels=labels)


def polyp_train_val_datalists(
    dataset_dir: PathLike,
    dataset_format: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and validation data lists: a seeded holdout (:func:`split_datalist`) of ``val_fraction`` of the
    labelled cases (neither dataset ships an official split). Same ``seed`` and files, same split.

    Args:
        dataset_dir: as :func:`polyp_datalist`.
        dataset_format: ``"kvasir_seg"``, ``"cvc_clinicdb"`` or ``"auto"``.
        val_fraction: holdout fraction in (0, 1); at least one case.
        seed: seed of the holdout selection.

    Returns:
        ``(train_list, val_list)``, disjoint, each sorted like :func:`polyp_datalist`.

    Raises:
        FileNotFoundError, ValueError: as :func:`polyp_datalist` (masks required); ``val_fraction`` outside (0, 1) or
            fewer than 2 cases.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    datalist = polyp_datalist(dataset_dir, dataset_format, labels=True)
    if len(datalist) < 2:
        raise ValueError(
            f"Cannot hold out validation cases from {len(datalist)} labelled case(s) in '{dataset_dir}'; "
            "training needs at least 2."
        )
    train, val = split_datalist(datalist, (1.0 - float(val_fraction), float(val_fraction)), seed=seed)
    logger.info(
        "Polyp data '%s': seeded holdout (val_fraction=%g, split_seed=%d): %d training, %d validation cases.",
        dataset_dir,
        val_fraction,
        seed,
        len(train),
        len(val),
    )
    return train, val
