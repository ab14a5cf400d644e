# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""Data lists for DDTI thyroid-nodule ultrasound (Pedraza et al., Proc. SPIE 9287, 2015) in the two layouts it is
shared in.

- ``"folders"``: ``images/`` + ``masks/`` with one mask per image of the same id and any of PNG, JPEG, GIF, BMP or
  TIFF (e.g. the widely shared nodule-centred crops ``images/<patient>_<frame>(<k>).png`` + ``masks/...gif``, where
  ``(k)`` numbers the nodules of one frame; the folders may also be called ``image/`` + ``mask/``).
- ``"xml"``: the original release (http://cimalab.unal.edu.co/applications/thyroid/), one flat folder with the
  ultrasound frames ``<patient>_<frame>.jpg`` and one annotation file ``<patient>.xml`` per patient whose ``<mark>``
  elements each hold an ``<image>`` (the frame number) and an ``<svg>`` text: a JSON list of nodule outlines
  ``[{"points": [{"x": .., "y": ..}, ...], ...}, ...]`` in pixel coordinates. The outlines of a frame are filled
  (:func:`rasterize_polygons`) into one binary PNG mask per frame, written once into ``mask_cache_dir`` and rewritten
  when the XML or the image is newer; the data list points at these files, so every later step (loading, scoring,
  MONAI Label) reads ordinary masks.

Case ids are the file stems (``"12_1"``, ``"100_1(2)"``), so both layouts group by patient with
:data:`DDTI_GROUP_REGEX` in :func:`monai_diffseg.data.split_datalist`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Literal
from xml.etree import ElementTree

import numpy as np
from monai.config import PathLike
from PIL import Image, ImageDraw

from monai_diffseg.utils import atomic_write, look_up_named_option

from .isic2018 import image_folder_datalist
from .splits import split_datalist
from .utils import check_dir, check_labels_option, format_names, index_by_case

__all__ = [
    "DDTI_FORMATS",
    "DDTI_GROUP_REGEX",
    "DDTI_IMAGE_EXTS",
    "DDTI_UNANNOTATED",
    "ddti_datalist",
    "ddti_train_val_datalists",
    "ddti_xml_polygons",
    "detect_ddti_format",
    "rasterize_polygons",
]

logger = logging.getLogger(__name__)

DDTI_FORMATS: tuple[str, ...] = ("auto", "folders", "xml")
"""``dataset_format`` options: detect, image/mask folders, or the original release with XML outlines."""

DDTI_GROUP_REGEX = r"^(\d+)_"
"""Groups DDTI case ids (``<patient>_<frame>`` or ``<patient>_<frame>(<k>)``) by patient: frames of one patient
image the same nodules, and the crops of one frame overlap, so neither may sit on both sides of a split."""

DDTI_IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff")
"""Image and mask extensions accepted (case-insensitive)."""

DDTI_UNANNOTATED: tuple[str, ...] = ("skip", "empty", "error")
"""What to do with an XML-layout frame without a usable outline: leave it out (logged), give it an empty mask, or
raise."""

_IMAGE_DIR_NAMES = ("images", "image")
_MASK_DIR_NAMES = ("masks", "mask")
_XML_FRAME_RE = re.compile(r"^(.+)_(\d+)$")  # <patient>_<frame>


def _child(root: str, names: Sequence[str]) -> str | None:
    """The first of ``names`` that is a sub-folder of ``root``, matched case-insensitively; ``None`` if none."""
    children = {name.lower(): name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))}
    for name in names:
        if name.lower() in children:
            return os.path.join(root, children[name.lower()])
    return None


def _has_xml(root: str) -> bool:
    return any(n.lower().endswith(".xml") and not n.startswith(".") for n in os.listdir(root))


def detect_ddti_format(dataset_dir: PathLike) -> str:
    """``"folders"`` when ``dataset_dir`` has an ``images/`` (or ``image/``) folder, ``"xml"`` when it holds
    ``*.xml`` annotation files.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a folder.
        ValueError: neither layout, naming what the folder contains and what was expected.
    """
    root = check_dir(dataset_dir, "DDTI dataset_dir")
    if _child(root, _IMAGE_DIR_NAMES) is not None:
        return "folders"
    if _has_xml(root):
        return "xml"
    contents = sorted(os.listdir(root))
    raise ValueError(
        f"'{root}' is not a DDTI layout: expected either 'images/' + 'masks/' folders (one mask per image, same id) "
        "or the original release (<patient>_<frame>.jpg images with one <patient>.xml per patient). It contains: "
        f"{format_names(contents) if contents else 'nothing'}."
    )


def ddti_xml_polygons(xml_file: PathLike) -> dict[int, list[np.ndarray]]:
    """Nodule outlines of one DDTI annotation file, per frame.

    Marks whose ``<svg>`` is not a JSON list of ``{"points": [{"x", "y"}, ...]}`` objects (the release has a few
    empty or malformed ones) and outlines with fewer than 3 points are left out with a warning naming the file and
    frame; such a frame maps to an empty list.

    Args:
        xml_file: a ``<patient>.xml`` of the original release.

    Returns:
        ``{frame number: [outline (K, 2) float array of (x, y) pixel coordinates, ...]}``; several marks of one frame
        are merged.

    Raises:
        ValueError: the file is not well-formed XML (naming it).
    """
    path = os.fspath(xml_file)
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise ValueError(f"cannot parse DDTI annotation file '{path}': {err}.") from err
    frames: dict[int, list[np.ndarray]] = {}
    for number, mark in enumerate(root.iter("mark")):
        image_text = (mark.findtext("image") or "").strip()
        if not image_text.isdigit():
            logger.warning(
                "'%s': <mark> %d has no frame number (<image>%s</image>); ignored.", path, number, image_text
            )
            continue
        frame = int(image_text)
        outlines = frames.setdefault(frame, [])
        svg = (mark.findtext("svg") or "").strip()
        try:
            shapes = json.loads(svg)
            if not isinstance(shapes, list):
                raise ValueError(f"expected a JSON list, got {type(shapes).__name__}")
            for shape in shapes:
                points = np.array([[float(p["x"]), float(p["y"])] for p in shape["points"]], dtype=float)
                if points.ndim != 2 or len(points) < 3:
                    logger.warning("'%s' frame %d: an outline with %d point(s) ignored.", path, frame, len(points))
                    continue
                outlines.append(points)
        except (ValueError, TypeError, KeyError) as err:
            logger.warning("'%s' frame %d: unusable <svg> outline (%s: %.60s); ignored.", path, frame, err, svg)
    return frames


def rasterize_polygons(polygons: Sequence[np.ndarray], spatial_size: Sequence[int]) -> np.ndarray:
    """Fill closed outlines into one binary mask (their union), boundary pixels included.

    Args:
        polygons: outlines, each ``(K, 2)`` with ``K >= 3`` points ``(x, y)`` in pixel coordinates (x to the right,
            y down, pixel centres at integers); points outside the image are clipped by the drawing.
        spatial_size: ``(H, W)`` of the mask.

    Returns:
        ``uint8`` array ``(H, W)`` in ``{0, 1}``; all zero without outlines.
    """
    height, width = (int(s) for s in spatial_size)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points in polygons:
        pts = np.asarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise ValueError(f"each outline must be a (K >= 3, 2) array of (x, y) points, got shape {pts.shape}.")
        draw.polygon([tuple(p) for p in pts.tolist()], fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def _folders_datalist(root: str, labels: bool | str) -> list[dict[str, str]]:
    image_dir = _child(root, _IMAGE_DIR_NAMES)
    if image_dir is None:
        raise FileNotFoundError(
            f"DDTI image folder not found: expected '{os.path.join(root, 'images')}' (or 'image/'). "
            f"'{root}' contains: {format_names(sorted(os.listdir(root))) or 'nothing'}."
        )
    mask_dir = _child(root, _MASK_DIR_NAMES)
    if labels is True and mask_dir is None:
        raise FileNotFoundError(
            f"DDTI mask folder not found: expected '{os.path.join(root, 'masks')}' (or 'mask/') beside "
            f"'{image_dir}'. Pass labels=False (or 'auto') to list images only."
        )
    use_masks = mask_dir is not None and labels is not False
    return image_folder_datalist(
        image_dir, mask_dir if use_masks else None, image_exts=DDTI_IMAGE_EXTS, mask_exts=DDTI_IMAGE_EXTS
    )


def _cached_mask(image: str, xml_file: str, outlines: list[np.ndarray], cache_dir: str, case: str) -> str:
    """Path of the rasterised mask of one frame, (re)written when missing or older than its image or XML."""
    path = os.path.join(cache_dir, f"{case}.png")
    newest = max(os.path.getmtime(image), os.path.getmtime(xml_file))
    if os.path.isfile(path) and os.path.getmtime(path) >= newest:
        return path
    with Image.open(image) as img:
        width, height = img.size
    mask = rasterize_polygons(outlines, (height, width)) * np.uint8(255)
    with atomic_write(path, "wb") as f:  # several processes (DDP ranks) may build the same list
        Image.fromarray(mask, mode="L").save(f, format="PNG")
    return path


def _xml_datalist(root: str, labels: bool | str, mask_cache_dir: PathLike | None, unannotated: str) -> list[dict]:
    def frame_case(name: str) -> str | None:
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in DDTI_IMAGE_EXTS or not _XML_FRAME_RE.match(stem):
            return None
        return stem

    images = index_by_case(root, frame_case, "DDTI frame", "image")
    if not images:
        raise ValueError(
            f"No DDTI frames <patient>_<frame>.{{{','.join(e[1:] for e in DDTI_IMAGE_EXTS)}}} found in '{root}'."
        )
    xml_files = {
        os.path.splitext(n)[0]: os.path.join(root, n)
        for n in os.listdir(root)
        if n.lower().endswith(".xml") and not n.startswith(".")
    }
    if labels is False or (labels == "auto" and not xml_files):
        return [{"image": images[case], "case": case} for case in sorted(images)]

    cache_dir = os.path.abspath(os.fspath(mask_cache_dir)) if mask_cache_dir else os.path.join(root, "masks_from_xml")
    parsed: dict[str, dict[int, list[np.ndarray]] | None] = {}
    datalist: list[dict[str, str]] = []
    problems: list[tuple[str, str]] = []  # (case, why) of frames without a usable outline
    for case in sorted(images):
        patient, frame = _XML_FRAME_RE.match(case).groups()  # type: ignore[union-attr]
        xml_file = xml_files.get(patient)
        if xml_file is None:
            problems.append((case, f"no annotation file '{os.path.join(root, patient + '.xml')}'"))
            outlines = None
        else:
            if patient not in parsed:
                try:
                    parsed[patient] = ddti_xml_polygons(xml_file)
                except ValueError as err:
                    if unannotated == "error":
                        raise
                    logger.warning("%s", err)
                    parsed[patient] = None
            frames = parsed[patient]
            outlines = None if frames is None else frames.get(int(frame))
            if frames is None:
                problems.append((case, f"'{xml_file}' cannot be parsed"))
            elif not outlines:
                problems.append((case, f"no usable outline for frame {int(frame)} in '{xml_file}'"))
        if outlines:
            label = _cached_mask(images[case], xml_file, outlines, cache_dir, case)  # type: ignore[arg-type]
        elif unannotated == "empty":
            label = _cached_mask(images[case], xml_file or images[case], [], cache_dir, case)
        else:
            continue
        datalist.append({"image": images[case], "label": label, "case": case})
    if problems:
        listed = "; ".join(f"{case}: {why}" for case, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        if unannotated == "error":
            raise ValueError(
                f"{len(problems)} DDTI frame(s) in '{root}' have no usable nodule outline: {listed}{more}. "
                "Pass unannotated='skip' to leave them out or 'empty' to give them an empty mask."
            )
        logger.warning(
            "%d DDTI frame(s) in '%s' without a usable nodule outline %s: %s%s.",
            len(problems),
            root,
            "left out" if unannotated == "skip" else "given an empty mask",
            listed,
            more,
        )
    if not datalist:
        raise ValueError(f"No DDTI frame in '{root}' has a usable nodule outline in its XML annotation file.")
    logger.info("DDTI XML layout '%s': %d annotated frames, masks in '%s'.", root, len(datalist), cache_dir)
    return datalist


def ddti_datalist(
    dataset_dir: PathLike,
    dataset_format: str = "auto",
    labels: bool | Literal["auto"] = "auto",
    mask_cache_dir: PathLike | None = None,
    unannotated: str = "skip",
) -> list[dict[str, str]]:
    """Build a data list of DDTI thyroid ultrasound images and nodule masks (layouts: see the module docstring).

    Args:
        dataset_dir: ``images/`` + ``masks/`` folders, or the flat original release with XML annotations.
        dataset_format: ``"folders"``, ``"xml"`` or ``"auto"`` (:func:`detect_ddti_format`).
        labels: ``True`` requires a mask (or outline) for every listed image; ``False`` lists images only (no
            ``"label"`` key); ``"auto"`` uses masks when the mask folder (or any XML file) exists.
        mask_cache_dir: XML layout only: folder for the rasterised masks ``<case>.png`` (0/255, at each image's size);
            default ``<dataset_dir>/masks_from_xml``. Written once, rewritten when an XML or image is newer.
        unannotated: XML layout only: frames without a usable outline (no XML, no mark, malformed ``<svg>``), see
            :data:`DDTI_UNANNOTATED`.

    Returns:
        Items ``{"image": abs_path, "label": abs_path, "case": id}`` sorted by case id (no ``"label"`` without masks);
        ids are the image file stems, e.g. ``"100_1(2)"`` (folders) or ``"100_1"`` (XML).

    Raises:
        FileNotFoundError: ``dataset_dir`` or a required folder is missing.
        ValueError: bad options, no images, an image without a mask (naming it and the expected path), an
            unrecognised layout, or (``unannotated="error"``) frames without outline.
    """
    dataset_format = look_up_named_option("dataset_format", dataset_format, DDTI_FORMATS)
    unannotated = look_up_named_option("unannotated", unannotated, DDTI_UNANNOTATED)
    check_labels_option(labels)
    root = check_dir(dataset_dir, "DDTI dataset_dir")
    if dataset_format == "auto":
        dataset_format = detect_ddti_format(root)
    if dataset_format == "folders":
        return _folders_datalist(root, labels)
    return _xml_datalist(root, labels, mask_cache_dir, unannotated)


def ddti_train_val_datalists(
    dataset_dir: PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    group_regex: str | None = DDTI_GROUP_REGEX,
    dataset_format: str = "auto",
    mask_cache_dir: PathLike | None = None,
    unannotated: str = "skip",
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and validation data lists: a seeded, group-aware holdout (:func:`split_datalist`) of
    ``val_fraction`` of the labelled cases (DDTI ships no official split). Same files, seed and regex, same split.

    Args:
        dataset_dir, dataset_format, mask_cache_dir, unannotated: as :func:`ddti_datalist` (masks required).
        val_fraction: holdout fraction in (0, 1), counted in cases; at least one group.
        seed: seed of the holdout selection.
        group_regex: keeps the cases of one group on one side (``re.search`` on the case id, first capture group);
            default :data:`DDTI_GROUP_REGEX` (by patient). ``r"^(.+?)(?:\\(\\d+\\))?$"`` groups by source frame
            only; ``None`` splits case by case.

    Returns:
        ``(train_list, val_list)``, disjoint in cases and in groups, each sorted by case id.

    Raises:
        FileNotFoundError, ValueError: as :func:`ddti_datalist`; ``val_fraction`` outside (0, 1); fewer than 2 cases
            (groups); a case id that ``group_regex`` does not match.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    datalist = ddti_datalist(dataset_dir, dataset_format, True, mask_cache_dir, unannotated)
    if len(datalist) < 2:
        raise ValueError(
            f"Cannot hold out validation cases from {len(datalist)} labelled case(s) in '{dataset_dir}'; "
            "training needs at least 2."
        )
    fractions = (1.0 - float(val_fraction), float(val_fraction))
    train, val = split_datalist(datalist, fractions, seed=seed, group_regex=group_regex or None)
    logger.info(
        "DDTI '%s': seeded holdout (val_fraction=%g, split_seed=%d, group_regex=%r): %d training, %d validation cases.",
        dataset_dir,
        val_fraction,
        seed,
        group_regex,
        len(train),
        len(val),
    )
    return train, val
